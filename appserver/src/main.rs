//! cmappserver (skeleton; being written).
mod probes;

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let base = argv0.rsplit('/').next().unwrap_or("").to_string();
    let code = match (base.as_str(), rest.first().map(String::as_str)) {
        ("cmapp_net_mon" | "cmapp_net_mon.pl", _) => probes::net::main(rest),
        ("cmapp_disk_mon" | "cmapp_disk_mon.pl", _) => probes::disk::main(rest),
        (_, Some("net-mon")) => probes::net::main(rest[1..].to_vec()),
        (_, Some("disk-mon")) => probes::disk::main(rest[1..].to_vec()),
        _ => 0,
    };
    std::process::exit(code);
}
