fn main() {
    // cblas-sys only declares the functions; Debian's libopenblas-dev provides them.
    println!("cargo:rustc-link-lib=openblas");
}
