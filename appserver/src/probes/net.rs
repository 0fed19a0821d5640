//! The LAN probe (the original's `cmapp_net_mon.pl`).
//!
//! Every polling interval it checks that the interface exists and is up, then
//! sends one ICMP echo to the target through it and waits for the reply until
//! the interval ends. `--probe_count` consecutive misses, or the interface
//! down or gone, end the probe with exit code 1 and a log line that says what
//! failed; otherwise it runs until it is killed.
//!
//! The echo goes out on an ICMP datagram ("ping") socket where
//! `net.ipv4.ping_group_range` admits the caller, on a raw socket (root or
//! CAP_NET_RAW) otherwise; the start line says which. The socket is bound to
//! the interface (SO_BINDTODEVICE) so that the echo really leaves through the
//! watched LAN and only replies that came in through it count. Replies match
//! by sequence number and source address, and on a raw socket, which sees
//! every ICMP packet, by identifier as well (on a datagram socket the kernel
//! picks the identifier and delivers only the replies that carry it).
//! IPv4 and IPv6 targets both work; a link-local IPv6 target is scoped to the
//! interface.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrLike, SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::log::Log;
use super::{parse_args, EXIT_FAILED, EX_SOFTWARE};
use common::duration::show as secs;

use common::probe::{NetArgs as Args, Probe};

const PROBE: Probe = Probe::Net;

/// Runs the probe with the arguments after the program name; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let args: Args = match parse_args(PROBE, args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    super::log::watch(PROBE.name(), args.log_level, args.guest_logfile.as_deref(), |log| {
        run(&args, log)
    })
}

/// Watches until something fails; returns the exit code and the reason.
fn run(args: &Args, log: &Log) -> (i32, String) {
    let (lan, ip, count, interval) = (&args.lan, args.ip, args.probe_count, args.polling_interval);
    if let Ok(Some(problem)) = link_problem(lan) {
        return (EXIT_FAILED, problem);
    }
    let pinger = match Pinger::open(lan, ip) {
        Ok(pinger) => pinger,
        Err(failure) => return failure,
    };
    log.at(
        0,
        format!(
            "watching {lan}: one ping to {ip} every {}, failing after {count} consecutive misses ({})",
            secs(interval),
            pinger.kind
        ),
    );
    let (mut seq, mut misses) = (0u16, 0u32);
    loop {
        let deadline = Instant::now() + interval;
        match link_problem(lan) {
            Ok(None) => {}
            Ok(Some(problem)) => return (EXIT_FAILED, problem),
            // Not knowing is no failure of the LAN; the ping still tells.
            Err(e) => log.at(1, format!("cannot read the state of {lan}: {e}")),
        }
        seq = seq.wrapping_add(1);
        match pinger.ping(seq, deadline) {
            Ok(rtt) => {
                if misses > 0 {
                    log.at(
                        1,
                        format!("{ip} replies again through {lan} after {misses} missed ping(s)"),
                    );
                }
                misses = 0;
                let ms = rtt.as_secs_f64() * 1000.0;
                log.at(2, format!("reply from {ip} through {lan}: seq={seq} time={ms:.3} ms"));
            }
            Err(miss) => {
                misses += 1;
                log.at(
                    1,
                    format!("ping seq={seq} from {lan} to {ip} got no reply: {miss} ({misses} of {count} misses)"),
                );
                if misses >= count {
                    let message = format!("{count} consecutive pings from {lan} to {ip} got no reply ({miss})");
                    return (EXIT_FAILED, message);
                }
            }
        }
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Why the interface cannot carry the ping, if it cannot: missing, down, or
/// up without a carrier. Listing the interfaces goes through netlink, so the
/// answer is the probe's own network namespace whatever /sys shows.
fn link_problem(lan: &str) -> Result<Option<String>, Errno> {
    let flags = nix::ifaddrs::getifaddrs()?
        .find(|a| a.interface_name == lan)
        .map(|a| a.flags);
    Ok(match flags {
        None => Some(format!("interface {lan} does not exist")),
        Some(f) if !f.contains(InterfaceFlags::IFF_UP) => Some(format!("interface {lan} is down")),
        Some(f) if !f.contains(InterfaceFlags::IFF_RUNNING) => Some(format!("interface {lan} is down (no carrier)")),
        Some(_) => None,
    })
}

/// Which kind of ICMP socket the probe got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Datagram,
    Raw,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Datagram => "ICMP datagram socket",
            Kind::Raw => "raw ICMP socket",
        })
    }
}

/// Why one ping got no reply.
#[derive(Debug)]
enum Miss {
    Timeout,
    Send(Errno),
    Receive(Errno),
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Timeout => f.write_str("timed out"),
            Miss::Send(e) => write!(f, "send failed: {}", e.desc()),
            Miss::Receive(e) => write!(f, "receive failed: {}", e.desc()),
        }
    }
}

/// An ICMP socket bound to the watched interface, aimed at the target.
#[derive(Debug)]
struct Pinger {
    fd: OwnedFd,
    kind: Kind,
    target: SockaddrStorage,
    target_ip: IpAddr,
    /// Our echo identifier; only checked on raw sockets (see the module doc).
    ident: u16,
}

const PAYLOAD: &[u8; 24] = b"cmapp_net_mon echo probe";

impl Pinger {
    /// Opens the socket; the error carries the exit code and the reason.
    fn open(lan: &str, ip: IpAddr) -> Result<Pinger, (i32, String)> {
        let no_such_lan = || (EXIT_FAILED, format!("interface {lan} does not exist"));
        let (family, protocol, target) = match ip {
            IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, SocketAddr::new(ip, 0)),
            IpAddr::V6(v6) => {
                // fe80::/10 means nothing without the interface it is on.
                let scope = if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    nix::net::if_::if_nametoindex(lan).map_err(|_| no_such_lan())?
                } else {
                    0
                };
                (
                    AddressFamily::Inet6,
                    SockProtocol::IcmpV6,
                    SocketAddrV6::new(v6, 0, 0, scope).into(),
                )
            }
        };
        let flags = SockFlag::SOCK_CLOEXEC;
        let (fd, kind) = match socket(family, SockType::Datagram, flags, protocol) {
            Ok(fd) => (fd, Kind::Datagram),
            Err(datagram) => match socket(family, SockType::Raw, flags, protocol) {
                Ok(fd) => (fd, Kind::Raw),
                Err(raw) => {
                    let message = format!(
                        "cannot open an ICMP socket: datagram: {} (see net.ipv4.ping_group_range); raw: {} (needs root or CAP_NET_RAW)",
                        datagram.desc(),
                        raw.desc()
                    );
                    return Err((EX_SOFTWARE, message));
                }
            },
        };
        setsockopt(&fd, sockopt::BindToDevice, &OsString::from(lan)).map_err(|e| match e {
            Errno::ENODEV => no_such_lan(),
            e => (
                EX_SOFTWARE,
                format!("cannot bind the ICMP socket to {lan}: {}", e.desc()),
            ),
        })?;
        Ok(Pinger {
            fd,
            kind,
            target: target.into(),
            target_ip: ip,
            ident: std::process::id() as u16,
        })
    }

    /// Sends echo request `seq` and waits for its reply until `deadline`;
    /// returns the round-trip time.
    fn ping(&self, seq: u16, deadline: Instant) -> Result<Duration, Miss> {
        let sent = Instant::now();
        let request = echo_request(self.target_ip.is_ipv4(), self.ident, seq);
        sendto(self.fd.as_raw_fd(), &request, &self.target, MsgFlags::empty()).map_err(Miss::Send)?;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Miss::Timeout);
            }
            // A receive timeout of zero would mean none at all.
            let wait = TimeVal::microseconds(left.as_micros().clamp(1, i64::MAX as u128) as i64);
            setsockopt(&self.fd, sockopt::ReceiveTimeout, &wait).map_err(Miss::Receive)?;
            // Raw sockets also get other hosts' ICMP traffic; and late
            // replies to earlier pings may be queued before ours.
            match recvfrom::<SockaddrStorage>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, from)) if self.is_reply(&buf[..n], from, seq) => return Ok(sent.elapsed()),
                Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(Miss::Receive(e)),
            }
        }
    }

    /// Whether `packet`, received from `from`, answers echo request `seq`.
    fn is_reply(&self, packet: &[u8], from: Option<SockaddrStorage>, seq: u16) -> bool {
        let v4 = self.target_ip.is_ipv4();
        // Raw IPv4 sockets hand over the IP header too; the others do not.
        let icmp = if v4 && self.kind == Kind::Raw {
            let header_len = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            packet.get(header_len..).unwrap_or_default()
        } else {
            packet
        };
        if icmp.len() < 8 {
            return false;
        }
        let reply_type = if v4 { 0 } else { 129 };
        let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
        let from_ip = from.as_ref().and_then(|a| match a.family() {
            Some(AddressFamily::Inet) => a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())),
            Some(AddressFamily::Inet6) => a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())),
            _ => None,
        });
        icmp[0] == reply_type
            && icmp[1] == 0
            && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
            && (self.kind == Kind::Datagram || ident == self.ident)
            && from_ip == Some(self.target_ip)
    }
}

/// An ICMP (v4 type 8) or ICMPv6 (type 128) echo request. The kernel fills
/// in the ICMPv6 checksum itself, and the identifier on datagram sockets.
fn echo_request(v4: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if v4 {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// RFC 1071: the ones' complement of the ones' complement sum of 16-bit words.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, i32> {
        parse_args(PROBE, args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn defaults_are_the_originals() {
        let args = parse(&["--lan", "eth1", "--ip", "192.168.1.154"]).unwrap();
        assert_eq!((args.log_level, args.probe_count), (0, 4));
        assert_eq!(args.polling_interval, Duration::from_secs(2));
        assert!(args.guest_logfile.is_none() && args.host_logfile.is_none());
    }

    #[test]
    fn the_manuals_example_parses() {
        let args = parse(&[
            "--lan",
            "lan0",
            "--ip",
            "192.168.1.154",
            "--guest_logfile",
            "/var/adm/vm1_lan0.log",
            "--host_logfile",
            "/var/adm/vm1_lan0.log",
            "--log_level",
            "1",
            "-probe_count",
            "5",
            "--polling_interval",
            "3",
        ])
        .unwrap();
        assert_eq!((args.log_level, args.probe_count), (1, 5));
        assert_eq!(args.polling_interval, Duration::from_secs(3));
        let args = parse(&["-lan=eth0", "-ip", "fe80::1", "--polling-interval", "0.2"]).unwrap();
        assert_eq!(args.lan, "eth0");
        assert_eq!(args.polling_interval, Duration::from_millis(200));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &["--ip", "10.0.0.1"][..],
            &["--lan", "eth0"],
            &["--lan", "eth0", "--ip", "not-an-ip"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--polling_interval", "0"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--polling_interval", "-1"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--probe_count", "0"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--log_level", "3"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--host_logfile", "relative.log"],
            &["--lan", "eth0", "--ip", "10.0.0.1", "--bogus"],
            &["--lan", "a-name-far-too-long", "--ip", "10.0.0.1"],
            &["--lan", "eth0", "--ip"],
        ] {
            assert_eq!(parse(bad).err(), Some(super::super::EX_USAGE), "{bad:?}");
        }
    }

    #[test]
    fn checksums_match_rfc1071() {
        // A packet that carries its checksum sums to zero.
        let packet = [8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xde, 0xad];
        let sum = internet_checksum(&packet);
        let mut with_sum = packet;
        with_sum[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(internet_checksum(&with_sum), 0);
        assert_eq!(echo_request(true, 0x1234, 1)[0], 8);
        assert_eq!(echo_request(false, 0x1234, 1)[0], 128);
    }
}
