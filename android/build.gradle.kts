// pinhole's Android library module: `./gradlew :pinhole:assembleRelease` gives
// build/outputs/aar/pinhole-release.aar. Needs the Android SDK (compileSdk below) and, for
// the native libraries, the NDK with cargo-ndk: ./build-native.sh fills src/main/jniLibs
// first (the preBuild dependency below runs it when PINHOLE_BUILD_NATIVE=1).
//
// The Kotlin sources are src/main/kotlin (the package's own) and UniFFI's Android flavour,
// generated into
// build/generated/uniffi by ./build-native.sh (uniffi-bindgen with android = true); the
// JVM flavour that bindings/test.sh tests on a host JVM is generated separately.
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

android {
    namespace = "dev.pinhole"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        // Shipped inside the AAR as proguard.txt and applied to every app that minifies:
        // keeps JNA and the generated bindings (R8 otherwise renames the fields JNA's
        // native code looks up by name, see consumer-rules.pro).
        consumerProguardFiles("consumer-rules.pro")
    }

    buildTypes {
        release {
            // A library is not minified itself; its consumers' R8 applies the rules above.
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }

    // The package's own Kotlin: Flow adapters (Flows.kt), the NetworkMonitor logic
    // (NetworkMonitor.kt, tested on a host JVM by ../bindings/test.sh) and its Android side
    // (AndroidNetworkSource.kt, ConnectivityManager), the AppLifecycle logic (AppLifecycle.kt,
    // tested likewise) and its Android side (AndroidLifecycleSource.kt,
    // ActivityLifecycleCallbacks).
    sourceSets["main"].kotlin.srcDir("src/main/kotlin")
    sourceSets["main"].kotlin.srcDir(layout.buildDirectory.dir("generated/uniffi"))
    sourceSets["main"].jniLibs.srcDir("src/main/jniLibs")

    packaging {
        // The .so files are already stripped by the release profile; keep them as built
        // (16 KB aligned, checked by ../bindings/check-elf.sh).
        jniLibs.keepDebugSymbols += "**/libpinhole_ffi.so"
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // JNA's Android artifact (with its own libjnidispatch.so for every ABI), not the jar.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.1")
    // UniFFI's Android flavour annotates its SystemCleaner path with @RequiresApi.
    implementation("androidx.annotation:annotation:1.9.1")
}

val buildNative by tasks.registering(Exec::class) {
    description = "Builds libpinhole_ffi.so for the four Android ABIs with cargo-ndk."
    workingDir = projectDir
    commandLine("./build-native.sh")
}

if (providers.environmentVariable("PINHOLE_BUILD_NATIVE").orNull == "1") {
    tasks.named("preBuild") { dependsOn(buildNative) }
}
