//! `uniffi-bindgen`: generates the Kotlin and Swift sources from the built pinhole-ffi
//! library (library mode). Built from the workspace so that its UniFFI version always
//! matches the one the library was built with.

fn main() {
    uniffi::uniffi_bindgen_main()
}
