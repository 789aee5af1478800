package dev.edgeq.demo

import android.content.Context
import dev.edgeq.core.Bundle
import dev.edgeq.core.BundleException
import java.io.File
import org.json.JSONObject

/**
 * Bundles shipped in `assets/edgeq/` (written by `edgeq bundle`). ExecuTorch's and ONNX
 * Runtime's loaders take a file path, so a bundle is copied once into
 * `filesDir/edgeq/<id>/` and every file is checked against its sha256 before use.
 */
class BundleStore(private val context: Context) {

    data class Entry(val id: String, val modelName: String, val task: String, val format: String) {
        override fun toString() = "$id ($format, $task)"
    }

    /** The bundles listed in `assets/edgeq/index.json`. */
    fun list(): List<Entry> {
        val text = context.assets.open("edgeq/index.json").bufferedReader().use { it.readText() }
        val bundles = JSONObject(text).getJSONArray("bundles")
        return (0 until bundles.length()).map { i ->
            val b = bundles.getJSONObject(i)
            Entry(b.getString("id"), b.getString("model_name"), b.getString("task"), b.getString("format"))
        }
    }

    /** The bundle `id`, copied out of the APK if needed, verified file by file. */
    @Throws(BundleException::class)
    fun open(id: String): Bundle {
        if (!ID.matches(id)) throw BundleException("bundle id '$id' is not a plain name")
        val dir = File(context.filesDir, "edgeq/$id")
        val cached = runCatching { Bundle.read(dir).also { it.verify() } }.getOrNull()
        if (cached != null && sameAsAsset(id, dir)) return cached
        val staging = File(context.filesDir, "edgeq/.$id.partial")
        staging.deleteRecursively()
        copyAssetDir("edgeq/$id", staging)
        val bundle = Bundle.read(staging)
        bundle.verify()
        dir.deleteRecursively()
        if (!staging.renameTo(dir)) throw BundleException("cannot move the bundle into $dir")
        return Bundle.read(dir)
    }

    private fun sameAsAsset(id: String, dir: File): Boolean {
        val asset = context.assets.open("edgeq/$id/${Bundle.BUNDLE_FILE}").use { it.readBytes() }
        return File(dir, Bundle.BUNDLE_FILE).readBytes().contentEquals(asset)
    }

    private fun copyAssetDir(path: String, dest: File) {
        val children = context.assets.list(path) ?: emptyArray()
        if (children.isEmpty()) { // a file (asset directories are never empty)
            dest.parentFile?.mkdirs()
            context.assets.open(path).use { input -> dest.outputStream().use { input.copyTo(it, 1 shl 20) } }
            return
        }
        dest.mkdirs()
        for (child in children) copyAssetDir("$path/$child", File(dest, child))
    }

    companion object {
        private val ID = Regex("[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    }
}
