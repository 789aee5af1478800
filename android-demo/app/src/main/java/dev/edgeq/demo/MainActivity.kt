package dev.edgeq.demo

import android.os.Bundle as AndroidBundle
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.Spinner
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import dev.edgeq.core.Bundle
import dev.edgeq.core.Vectors
import java.util.concurrent.Executors
import kotlin.math.exp

/**
 * Pick a bundle from index.json; embed a sentence (sentence-embedding bundles: the vector
 * and its cosine with the previous sentence) or classify it (logits → softmax); or run the
 * bundle's golden input and compare with the host's output.
 */
class MainActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var store: BundleStore
    private var loaded: Pair<Bundle, ModelRunner>? = null
    private var previous: FloatArray? = null

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        store = BundleStore(this)
        val spinner = findViewById<Spinner>(R.id.bundles)
        val output = findViewById<TextView>(R.id.output)
        val entries = runCatching { store.list() }.getOrElse {
            output.text = "No bundles: run 'edgeq bundle ARTIFACT android-demo' and rebuild (${it.message})"
            emptyList()
        }
        spinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, entries)
        findViewById<Button>(R.id.run).setOnClickListener {
            val entry = spinner.selectedItem as? BundleStore.Entry ?: return@setOnClickListener
            val text = findViewById<EditText>(R.id.input).text.toString()
            background(output) { runText(entry.id, text) }
        }
        findViewById<Button>(R.id.golden).setOnClickListener {
            val entry = spinner.selectedItem as? BundleStore.Entry ?: return@setOnClickListener
            background(output) { runGolden(entry.id) }
        }
    }

    private fun background(output: TextView, work: () -> String) {
        output.text = "running…"
        worker.execute {
            val text = runCatching(work).getOrElse { "error: ${it.message}" }
            runOnUiThread { output.text = text }
        }
    }

    private fun load(id: String): Pair<Bundle, ModelRunner> {
        loaded?.let { if (it.first.id == id) return it }
        loaded?.second?.close()
        val bundle = store.open(id)
        return (bundle to openRunner(bundle, bundle.threads)).also { loaded = it; previous = null }
    }

    private fun runText(id: String, text: String): String {
        val (bundle, runner) = load(id)
        val tokenizer = Inputs.tokenizer(bundle) ?: return "${bundle.id} has no WordPiece tokenizer; use the golden check"
        val t0 = System.nanoTime()
        val out = runner.run(Inputs.fromText(bundle, tokenizer, text))
        val ms = (System.nanoTime() - t0) / 1e6
        return when (bundle.task) {
            "sentence-embedding" -> {
                // edgeq's embedding graphs already pool and normalise (postprocess.applied_in_model)
                val emb = if (bundle.poolingInModel) out else Vectors.l2Normalize(out)
                val sim = previous?.let { "cosine with the previous sentence: %.4f\n".format(Vectors.cosine(it, emb)) } ?: ""
                previous = emb
                "${emb.size}-dim embedding in %.1f ms\n$sim".format(ms) + emb.take(8).joinToString(prefix = "[", postfix = ", …]") { "%.4f".format(it) }
            }
            "sequence-classification" -> {
                val max = out.maxOrNull() ?: 0f
                val e = out.map { exp((it - max).toDouble()) }
                val probs = e.map { it / e.sum() }
                "class probabilities in %.1f ms:\n".format(ms) + probs.mapIndexed { i, p -> "  $i: %.4f".format(p) }.joinToString("\n")
            }
            else -> "output (${out.size} values) in %.1f ms: ".format(ms) + out.take(8).joinToString()
        }
    }

    private fun runGolden(id: String): String {
        val (bundle, runner) = load(id)
        val expected = bundle.readFloats(bundle.goldenOutput ?: return "${bundle.id} has no golden output")
        val result = Vectors.checkGolden(runner.run(Inputs.golden(bundle)), expected, bundle.toleranceMaxAbs, bundle.toleranceMinCosine)
        return (if (result.ok) "golden check passed" else "golden check FAILED") +
            "\nmax |diff| %.3g (tolerance %.3g)\ncosine %.6f (min %.4f)\nruntime: ${runner.runtime}".format(
                result.maxAbsDiff, result.toleranceMaxAbs, result.cosine, result.toleranceMinCosine)
    }

    override fun onDestroy() {
        worker.shutdown()
        loaded?.second?.close()
        super.onDestroy()
    }
}
