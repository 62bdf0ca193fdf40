// Standalone build of the module: `cd android && gradle wrapper && ./gradlew assembleRelease`
// (or include it from an app's settings.gradle.kts).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "pinhole"
