// Versions of the Android Gradle plugin and Kotlin this demo was written for.
// (Not built here: see README.md, "What was and was not verified".)
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
}
