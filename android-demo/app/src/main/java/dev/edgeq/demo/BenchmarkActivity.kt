package dev.edgeq.demo

import android.app.Activity
import android.os.Build
import android.os.Debug
import android.os.Bundle as AndroidBundle
import android.os.SystemClock
import android.util.Log
import dev.edgeq.core.BenchmarkResults
import dev.edgeq.core.Vectors
import java.io.File

/**
 * Benchmark mode, driven over adb by `edgeq profile --device 'adb:SERIAL?app=dev.edgeq.demo'`
 * (or by hand):
 *
 *     adb shell am start -W -n dev.edgeq.demo/.BenchmarkActivity --es bundle <id> --ei runs 20 --ei warmup 3
 *
 * Verifies the bundle, loads it (timed), checks the golden output, runs `warmup` untimed and
 * `runs` timed inferences on the golden input, and writes `files/benchmark_results.json` in
 * the shape of `edgeq profile --json` (memory: `Debug.getPss()`, in bytes), or
 * `files/benchmark_error.txt` if anything fails. Then it finishes.
 */
class BenchmarkActivity : Activity() {
    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val id = intent.getStringExtra("bundle")
        val runs = intent.getIntExtra("runs", 20)
        val warmup = intent.getIntExtra("warmup", 3)
        val threads = intent.getIntExtra("threads", -1)
        val resultFile = File(filesDir, "benchmark_results.json")
        val errorFile = File(filesDir, "benchmark_error.txt")
        resultFile.delete()
        errorFile.delete()
        Thread {
            try {
                require(id != null) { "pass the bundle id: --es bundle <id>" }
                require(runs in 1..100_000 && warmup in 0..100_000) { "runs must be >= 1 and warmup >= 0" }
                val json = benchmark(id, runs, warmup, threads).toString(2)
                val tmp = File(filesDir, "benchmark_results.json.partial")
                tmp.writeText(json)
                check(tmp.renameTo(resultFile)) { "cannot write $resultFile" }
                Log.i(TAG, "wrote $resultFile")
            } catch (e: Throwable) {
                Log.e(TAG, "benchmark failed", e)
                errorFile.writeText("error: ${e.message}\n")
            }
            runOnUiThread { finish() }
        }.start()
    }

    private fun benchmark(id: String, runs: Int, warmup: Int, threadsArg: Int): org.json.JSONObject {
        val bundle = BundleStore(this).open(id) // copies and verifies every sha256
        val threads = if (threadsArg > 0) threadsArg else bundle.threads
        val m = BenchmarkResults.Measured()
        m.device = "${Build.MANUFACTURER} ${Build.MODEL} (Android ${Build.VERSION.RELEASE}, ${Build.SUPPORTED_ABIS.firstOrNull()})"
        m.memorySource = "Debug.getPss (proportional set size, KB x 1024)"
        Runtime.getRuntime().gc()
        m.baselineBytes = Debug.getPss() * 1024
        val t0 = SystemClock.elapsedRealtimeNanos()
        val runner = openRunner(bundle, threads)
        m.loadMs = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        runner.use {
            m.runtime = it.runtime
            m.threadsUsed = threads
            val inputs = Inputs.golden(bundle)
            val expected = bundle.readFloats(bundle.goldenOutput!!)
            m.golden = Vectors.checkGolden(it.run(inputs), expected, bundle.toleranceMaxAbs, bundle.toleranceMinCosine)
            m.warmup = warmup
            repeat(warmup) { _ -> it.run(inputs) }
            var peak = Debug.getPss() * 1024
            m.samplesMs = DoubleArray(runs) { _ ->
                val t = SystemClock.elapsedRealtimeNanos()
                it.run(inputs)
                val ms = (SystemClock.elapsedRealtimeNanos() - t) / 1e6
                ms
            }
            // getPss walks the process's mappings (slow): sampled after the timed runs, not between them
            peak = maxOf(peak, Debug.getPss() * 1024)
            m.peakBytes = peak
            m.finalBytes = Debug.getPss() * 1024
        }
        return BenchmarkResults.toJson(bundle, m)
    }

    companion object {
        private const val TAG = "edgeq-benchmark"
    }
}
