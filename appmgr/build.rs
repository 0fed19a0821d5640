//! Release builds of cmappmgr on Linux are linked with `link/hot-text.ld`:
//! the functions an idle manager runs (start-up, connection, launch, pings,
//! stop), listed by `link/hot-text.sh` from a run under callgrind, are placed
//! together at the start of the text. An idle manager's resident text is
//! then about the size of that code, not of the whole binary: the kernel maps
//! a file's pages around each page fault (64 KiB or a whole page-cache folio),
//! so code spread over the binary made nearly all of it resident (BENCHMARKS.md,
//! "cmappmgr < 6 MB").
//!
//! The script only orders sections (`INSERT BEFORE .text` keeps the linker's
//! default layout otherwise); names it lists that no longer exist match
//! nothing. It works with rust-lld (the default linker since Rust 1.90), GNU
//! ld and zig's linker (`cargo zigbuild`, packaging/build.sh). Debug builds
//! (the tests') are linked as before.

fn main() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    println!("cargo:rerun-if-env-changed=CMAPP_NO_HOT_TEXT");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let elf = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // CMAPP_NO_HOT_TEXT=1: the linker's default layout (for comparisons, or
    // a linker without linker-script INSERT, such as gold).
    let off = std::env::var_os("CMAPP_NO_HOT_TEXT").is_some_and(|v| !v.is_empty() && v != "0");
    if release && elf && !off {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
        println!("cargo:rustc-link-arg-bin=cmappmgr=-Wl,-T,{}", script.display());
    }
}
