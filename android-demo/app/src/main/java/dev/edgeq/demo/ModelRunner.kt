package dev.edgeq.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.edgeq.core.Bundle
import java.nio.FloatBuffer
import java.nio.LongBuffer
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** One input tensor: int64 (token ids, masks) or float32 (images, features). */
class InputTensor(val spec: Bundle.TensorSpec, val longs: LongArray? = null, val floats: FloatArray? = null)

/** A loaded model that maps inputs to its first output, flattened. */
interface ModelRunner : AutoCloseable {
    val runtime: String
    fun run(inputs: List<InputTensor>): FloatArray
}

/** Loads the bundle's model in the runtime its `format` names. */
fun openRunner(bundle: Bundle, threads: Int): ModelRunner = when (bundle.format) {
    "executorch" -> ExecuTorchRunner(bundle, threads)
    "onnx" -> OnnxRunner(bundle, threads)
    else -> throw IllegalArgumentException("bundle format '${bundle.format}' is not supported by this app")
}

class ExecuTorchRunner(bundle: Bundle, threads: Int) : ModelRunner {
    private val module = Module.load(bundle.modelPath().absolutePath, Module.LOAD_MODE_MMAP, threads)

    init {
        val err = module.loadMethod("forward")
        check(err == 0) { "ExecuTorch cannot load forward() of ${bundle.modelFile} (error 0x${err.toString(16)})" }
    }

    override val runtime = "executorch ${bundle.runtimeVersion} (Android)"

    override fun run(inputs: List<InputTensor>): FloatArray {
        val values = inputs.map { t ->
            val tensor = when {
                t.longs != null -> Tensor.fromBlob(t.longs, t.spec.shape)
                t.floats != null -> Tensor.fromBlob(t.floats, t.spec.shape)
                else -> error("input ${t.spec.name} has no data")
            }
            EValue.from(tensor)
        }
        val out = module.forward(*values.toTypedArray())
        check(out.isNotEmpty()) { "ExecuTorch returned no output" }
        return out[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}

class OnnxRunner(bundle: Bundle, threads: Int) : ModelRunner {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession

    init {
        val options = OrtSession.SessionOptions()
        if (threads > 0) options.setIntraOpNumThreads(threads)
        session = env.createSession(bundle.modelPath().absolutePath, options)
    }

    override val runtime = "onnxruntime ${bundle.runtimeVersion} (Android)"

    override fun run(inputs: List<InputTensor>): FloatArray {
        val tensors = inputs.associate { t ->
            t.spec.name to when {
                t.longs != null -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.longs), t.spec.shape)
                t.floats != null -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.floats), t.spec.shape)
                else -> error("input ${t.spec.name} has no data")
            }
        }
        try {
            session.run(tensors).use { result ->
                val buffer = (result.get(0) as OnnxTensor).floatBuffer
                return FloatArray(buffer.remaining()).also { buffer.get(it) }
            }
        } finally {
            tensors.values.forEach { it.close() }
        }
    }

    override fun close() = session.close()
}
