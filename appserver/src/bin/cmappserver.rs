//! `cmappserver`: the guest-side daemon (the code is the `appserver` library).

fn main() -> std::process::ExitCode {
    appserver::main()
}
