// Plain Java: no Android dependency, so its logic is tested on any JVM
// (tests/test_android_core.py compiles and runs it with javac + JUnit 4).
plugins {
    `java-library`
}

java {
    toolchain { languageVersion.set(JavaLanguageVersion.of(17)) }
}

dependencies {
    // Android ships org.json in the platform; on the JVM the same API comes from this artifact.
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The JUnit tests read reference data that tests/test_android_core.py writes.
    systemProperty("edgeq.fixtures", System.getProperty("edgeq.fixtures") ?: "")
}
