//! cmappmgr (skeleton; being written).
#![allow(dead_code)]
mod client;
mod vm;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("vm") {
        std::process::exit(vm::main(args[1..].to_vec()));
    }
}
