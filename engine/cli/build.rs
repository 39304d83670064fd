//! Links the `shiphat` binary with packed relative relocations (`DT_RELR`) where the platform
//! has them (GNU ld 2.38 and glibc 2.36 on). A position-independent binary of this size carries
//! about 64,000 relative relocations, which the dynamic loader otherwise reads (1.5 MB of
//! `.rela.dyn`) and applies one by one at every start: about 3 ms of CPU for each
//! `shiphat run`, a command whose whole overhead is measured against a shell script's. Packed,
//! they take a few kilobytes. An older linker warns and ignores the option.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
