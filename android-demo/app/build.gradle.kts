import groovy.json.JsonSlurper

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// The bundles `edgeq bundle ARTIFACT android-demo` wrote. Each edgeq_bundle.json names its
// runtime and exact release; the app depends on that release. A bundle listed in
// index.json whose files are missing fails the build instead of failing on the phone.
val bundleRoot = file("src/main/assets/edgeq")

@Suppress("UNCHECKED_CAST")
fun bundleDescriptions(): List<Map<String, Any?>> {
    val index = file("$bundleRoot/index.json")
    if (!index.isFile) return emptyList()
    val entries = (JsonSlurper().parse(index) as Map<String, Any?>)["bundles"] as List<Map<String, Any?>>
    return entries.map { entry ->
        val desc = file("$bundleRoot/${entry["bundle_file"]}")
        if (!desc.isFile) throw GradleException("index.json lists ${entry["id"]}, but $desc is missing (re-run 'edgeq bundle')")
        val parsed = JsonSlurper().parse(desc) as Map<String, Any?>
        val files = parsed["files"] as Map<String, Any?>
        for (rel in files.keys) {
            if (!file("${desc.parentFile}/$rel").isFile) {
                throw GradleException("bundle ${entry["id"]} lacks $rel (re-run 'edgeq bundle')")
            }
        }
        parsed
    }
}

@Suppress("UNCHECKED_CAST")
fun runtimeRelease(bundles: List<Map<String, Any?>>, format: String, fallback: String): String {
    val releases = bundles.filter { it["format"] == format }
        .map { (it["runtime"] as Map<String, Any?>)["release"] as String }.toSet()
    if (releases.size > 1) {
        throw GradleException("bundles need different $format releases $releases; one app links one runtime")
    }
    return releases.firstOrNull() ?: fallback
}

val bundles = bundleDescriptions()
val executorchVersion = runtimeRelease(bundles, "executorch", providers.gradleProperty("edgeq.executorchVersion").get())
val onnxruntimeVersion = runtimeRelease(bundles, "onnx", providers.gradleProperty("edgeq.onnxruntimeVersion").get())

android {
    namespace = "dev.edgeq.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgeq.demo"
        minSdk = 28 // edgeq_bundle.json android.min_sdk
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") } // edgeq_bundle.json android.abis
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    // Model files and golden tensors stay uncompressed in the APK (edgeq_bundle.json
    // android.no_compress), so they are copied out (or memory-mapped) without inflating.
    androidResources {
        noCompress += listOf("pte", "onnx", "data", "bin")
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    implementation(project(":core"))
    implementation("org.pytorch:executorch-android:$executorchVersion")
    implementation("com.microsoft.onnxruntime:onnxruntime-android:$onnxruntimeVersion")
    implementation("androidx.appcompat:appcompat:1.7.0")
}
