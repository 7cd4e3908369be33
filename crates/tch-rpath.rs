//! With the `tch` feature, torch-sys' build script reports the libtorch directory it linked
//! against (`DEP_TCH_LIBTORCH_LIB`, from the PyTorch wheel when built with
//! `LIBTORCH_USE_PYTORCH=1`); recording it as an rpath lets the binaries and tests find
//! `libtorch_cpu.so` at run time without `LD_LIBRARY_PATH`. Without the feature this does nothing.

fn main() {
    // The path of this script from each of the three packages that use it: a path that does
    // not exist (such as `build.rs`) would make cargo rerun the script, and rebuild the
    // package, on every invocation.
    println!("cargo:rerun-if-changed=../tch-rpath.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
