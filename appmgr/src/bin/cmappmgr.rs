//! `cmappmgr`: the host-side service command (the code is the `appmgr` library).

fn main() -> std::process::ExitCode {
    appmgr::main()
}
