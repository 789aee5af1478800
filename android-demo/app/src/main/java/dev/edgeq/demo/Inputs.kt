package dev.edgeq.demo

import dev.edgeq.core.Bundle
import dev.edgeq.core.WordPieceTokenizer
import java.io.File

/** Model inputs: a sentence through the bundle's tokenizer, or the bundle's golden tensors. */
object Inputs {
    fun golden(bundle: Bundle): List<InputTensor> {
        require(bundle.goldenOutput != null) { "this bundle has no golden input" }
        return bundle.goldenInputs.map { spec ->
            when (spec.dtype) {
                "int64" -> InputTensor(spec, longs = bundle.readLongs(spec))
                "float32" -> InputTensor(spec, floats = bundle.readFloats(spec))
                else -> throw IllegalArgumentException("golden input ${spec.name} has dtype ${spec.dtype}, not int64/float32")
            }
        }
    }

    fun fromText(bundle: Bundle, tokenizer: WordPieceTokenizer, text: String): List<InputTensor> {
        val config = bundle.tokenizer ?: throw IllegalArgumentException("${bundle.id} takes tensors, not text")
        val enc = tokenizer.encode(text, config.maxLength)
        return listOf(InputTensor(bundle.inputs[0], longs = enc.inputIds), InputTensor(bundle.inputs[1], longs = enc.attentionMask))
    }

    /** The bundle's WordPiece tokenizer, or null (no tokenizer, or a kind this app lacks). */
    fun tokenizer(bundle: Bundle): WordPieceTokenizer? {
        val config = bundle.tokenizer ?: return null
        if (config.kind != "wordpiece") return null
        return WordPieceTokenizer(WordPieceTokenizer.readVocab(File(bundle.dir, "vocab.txt")), config)
    }
}
