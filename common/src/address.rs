//! Where the pair meet: the addresses cmappserver listens on
//! ([`ListenAddr`]: TCP, or a virtio-vsock port) and the `-node` values
//! cmappmgr connects to ([`Node`]: a host name or address over TCP, a
//! vsock CID through the kernel's AF_VSOCK, or a user-space vsock device's
//! Unix socket, the Firecracker "hybrid vsock" convention).

use std::fmt;
use std::net::{AddrParseError, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// `VMADDR_CID_ANY` and `VMADDR_PORT_ANY`: wildcards, never a peer's address.
const VSOCK_ANY: u32 = u32::MAX;

/// Why a listen address or a `-node` value is not one; each message quotes
/// the value as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// A listen address that is neither an address and port nor `vsock:PORT`.
    #[error("{input:?} is not an address and port such as 0.0.0.0:5315 or [::1]:5315, nor vsock:PORT")]
    Listen {
        input: String,
        #[source]
        source: AddrParseError,
    },
    /// The port of a `vsock:PORT` listen address.
    #[error("{input:?}: {source}")]
    ListenPort {
        input: String,
        #[source]
        source: VsockPortError,
    },
    #[error("-node {node:?}: the name before '@' is empty")]
    EmptyName { node: String },
    /// The port of a vsock `-node`.
    #[error("-node {node:?}: {source}")]
    NodePort {
        node: String,
        #[source]
        source: VsockPortError,
    },
    #[error("-node {node:?}: {cid:?} is not a guest's vsock context id (CID, 1 to {})", VSOCK_ANY - 1)]
    Cid { node: String, cid: String },
    #[error("-node {node:?}: the vsock device's socket must be an absolute path (vsock-unix:/path/to/socket[:PORT])")]
    RelativeSocket { node: String },
    /// A TCP `-node` that is not `HOST[:PORT]`.
    #[error(
        "-node {node:?} is not a host name or address with an optional :port, \
         nor vsock:CID[:PORT] or vsock-unix:/PATH[:PORT]"
    )]
    HostPort { node: String },
}

/// A vsock port that is not a number, or is the wildcard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{port:?} is not a vsock port (0 to {})", VSOCK_ANY - 1)]
pub struct VsockPortError {
    pub port: String,
}

/// One address cmappserver listens on: `0.0.0.0:5315`, `[::]:5315`, or
/// `vsock:5315` (a virtio-vsock port, any CID: the guest's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Vsock { port: u32 },
}

impl FromStr for ListenAddr {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        if let Some(port) = strip_scheme(s, "vsock") {
            return Ok(ListenAddr::Vsock {
                port: vsock_port(port).map_err(|source| AddressError::ListenPort {
                    input: s.into(),
                    source,
                })?,
            });
        }
        s.parse().map(ListenAddr::Tcp).map_err(|source| AddressError::Listen {
            input: s.into(),
            source,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
        }
    }
}

/// `vsock:` or `VSOCK:` → the rest.
fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let (head, rest) = s.split_once(':')?;
    head.eq_ignore_ascii_case(scheme).then_some(rest)
}

fn vsock_port(s: &str) -> Result<u32, VsockPortError> {
    match s.parse::<u32>() {
        Ok(p) if p != VSOCK_ANY => Ok(p),
        _ => Err(VsockPortError { port: s.into() }),
    }
}

/// How cmappmgr reaches a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name or address, over TCP.
    Tcp { host: String, port: u16 },
    /// A guest's context id, through the host kernel's AF_VSOCK (vhost-vsock).
    Vsock { cid: u32, port: u32 },
    /// The Unix socket of a user-space vsock device (Firecracker,
    /// Cloud Hypervisor, vhost-device-vsock): `CONNECT <port>\n`, `OK ...\n`,
    /// then the stream to the guest's port.
    VsockUnix { path: PathBuf, port: u32 },
}

/// A `-node` value: where the guest is, and the name its certificate is
/// checked against.
///
/// | form                                | meaning |
/// |-------------------------------------|---------|
/// | `guest1`, `guest1:5400`, `10.0.0.5`, `[fe80::1]:5400`, `fe80::1` | TCP; the host is the name |
/// | `[NAME@]vsock:CID[:PORT]`           | AF_VSOCK to the guest with context id CID |
/// | `[NAME@]vsock-unix:/PATH[:PORT]`    | a user-space vsock device's Unix socket |
///
/// A vsock address carries no name: `NAME@` gives the guest's name (the one
/// its certificate carries, and the key of a `trustStore=NAME:...` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Option<String>,
    pub target: Target,
}

impl Node {
    /// Parses a `-node` value; `default_port` where it names no port.
    pub fn parse(node: &str, default_port: u16) -> Result<Node, AddressError> {
        let port_error = |source| AddressError::NodePort {
            node: node.into(),
            source,
        };
        let (name, rest) = match node.split_once('@') {
            Some((name, rest)) if is_vsock(rest) => {
                if name.is_empty() {
                    return Err(AddressError::EmptyName { node: node.into() });
                }
                (Some(name.to_string()), rest)
            }
            _ => (None, node),
        };
        if let Some(addr) = strip_scheme(rest, "vsock") {
            let (cid, port) = match addr.split_once(':') {
                Some((cid, port)) => (cid, vsock_port(port).map_err(port_error)?),
                None => (addr, u32::from(default_port)),
            };
            let cid = match cid.parse::<u32>() {
                Ok(c) if c != 0 && c != VSOCK_ANY => c,
                _ => {
                    return Err(AddressError::Cid {
                        node: node.into(),
                        cid: cid.into(),
                    })
                }
            };
            return Ok(Node {
                name,
                target: Target::Vsock { cid, port },
            });
        }
        if let Some(addr) = strip_scheme(rest, "vsock-unix") {
            // A path may hold ':' itself: only a final all-digit part is a port.
            let (path, port) = match addr.rsplit_once(':') {
                Some((path, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    (path, vsock_port(port).map_err(port_error)?)
                }
                _ => (addr, u32::from(default_port)),
            };
            if !path.starts_with('/') {
                return Err(AddressError::RelativeSocket { node: node.into() });
            }
            return Ok(Node {
                name,
                target: Target::VsockUnix {
                    path: path.into(),
                    port,
                },
            });
        }
        let (host, port) = parse_host_port(node, default_port)?;
        Ok(Node {
            name: None,
            target: Target::Tcp { host, port },
        })
    }

    /// The name the guest's certificate is checked against (CA trust) and
    /// the key of its `trustStore=NAME:...` entry: the host for TCP, the
    /// `NAME@` part for vsock.
    pub fn name(&self) -> Option<&str> {
        match &self.target {
            Target::Tcp { host, .. } => Some(host),
            _ => self.name.as_deref(),
        }
    }
}

fn is_vsock(s: &str) -> bool {
    strip_scheme(s, "vsock").is_some() || strip_scheme(s, "vsock-unix").is_some()
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(name), false) = (&self.name, matches!(self.target, Target::Tcp { .. })) {
            write!(f, "{name}@")?;
        }
        match &self.target {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Target::VsockUnix { path, port } => write!(f, "vsock-unix:{}:{port}", path.display()),
        }
    }
}

/// Host and port of a TCP `-node` value: `guest1`, `guest1:5400`,
/// `10.0.0.5`, `[fe80::1]:5400`, or a bare IPv6 address.
pub fn parse_host_port(node: &str, default_port: u16) -> Result<(String, u16), AddressError> {
    let bad = || AddressError::HostPort { node: node.into() };
    if let Some(rest) = node.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match node.matches(':').count() {
        0 if !node.is_empty() => Ok((node.to_string(), default_port)),
        1 => {
            let (h, p) = node.split_once(':').ok_or_else(bad)?;
            if h.is_empty() {
                return Err(bad());
            }
            Ok((h.to_string(), p.parse().map_err(|_| bad())?))
        }
        n if n > 1 => Ok((node.to_string(), default_port)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> Result<Node, AddressError> {
        Node::parse(s, 5315)
    }

    fn tcp(host: &str, port: u16) -> Node {
        Node {
            name: None,
            target: Target::Tcp {
                host: host.into(),
                port,
            },
        }
    }

    #[test]
    fn tcp_nodes_parse_as_before() {
        assert_eq!(node("guest1").unwrap(), tcp("guest1", 5315));
        assert_eq!(node("guest1:5400").unwrap(), tcp("guest1", 5400));
        assert_eq!(node("10.0.0.5").unwrap(), tcp("10.0.0.5", 5315));
        assert_eq!(node("[::1]:7").unwrap(), tcp("::1", 7));
        assert_eq!(node("[::1]").unwrap(), tcp("::1", 5315));
        assert_eq!(node("fe80::1").unwrap(), tcp("fe80::1", 5315));
        assert!(node("g:x").is_err());
        assert!(node("").is_err());
        assert!(node("[::1").is_err());
        // '@' means a name only before a vsock address.
        assert_eq!(node("a@b:1").unwrap(), tcp("a@b", 1));
    }

    #[test]
    fn a_tcp_node_is_named_by_its_host_and_printed_so_it_parses_back() {
        for (text, host, port, shown) in [
            ("guest1", "guest1", 5315, "guest1:5315"),
            ("guest1:7", "guest1", 7, "guest1:7"),
            ("2001:db8::1", "2001:db8::1", 5315, "[2001:db8::1]:5315"),
            ("[fe80::1]:9", "fe80::1", 9, "[fe80::1]:9"),
            // '@' is part of the host unless a vsock address follows it.
            ("@guest:1", "@guest", 1, "@guest:1"),
        ] {
            let n = node(text).unwrap();
            assert_eq!(n, tcp(host, port), "{text}");
            assert_eq!(n.name(), Some(host), "{text}");
            assert_eq!(n.to_string(), shown, "{text}");
            assert_eq!(node(shown).unwrap(), n, "{shown}");
        }
        for bad in ["[::1]x", "[::1]:", "[::1]:x", ":5315", "g:", "g:70000"] {
            assert_eq!(node(bad), Err(AddressError::HostPort { node: bad.into() }), "{bad}");
        }
    }

    #[test]
    fn vsock_nodes_parse() {
        let n = node("vsock:3").unwrap();
        assert_eq!(n.target, Target::Vsock { cid: 3, port: 5315 });
        assert_eq!((n.name(), n.to_string()), (None, "vsock:3:5315".into()));
        let n = node("guest1@VSOCK:42:1024").unwrap();
        assert_eq!(n.target, Target::Vsock { cid: 42, port: 1024 });
        assert_eq!(n.name(), Some("guest1"));
        assert_eq!(n.to_string(), "guest1@vsock:42:1024");
        for bad in [
            "vsock:",
            "vsock:0",
            "vsock:4294967295",
            "vsock:x",
            "vsock:3:",
            "vsock:3:4294967295",
            "vsock:3:-1",
            "@vsock:3",
        ] {
            let e = node(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn vsock_unix_nodes_parse() {
        let n = node("vsock-unix:/run/vm1/vsock.sock").unwrap();
        assert_eq!(
            n.target,
            Target::VsockUnix {
                path: "/run/vm1/vsock.sock".into(),
                port: 5315
            }
        );
        let n = node("vm1@vsock-unix:/run/a:b/v.sock:6000").unwrap();
        assert_eq!(
            n.target,
            Target::VsockUnix {
                path: "/run/a:b/v.sock".into(),
                port: 6000
            }
        );
        assert_eq!(n.to_string(), "vm1@vsock-unix:/run/a:b/v.sock:6000");
        // Only an all-digit last part is a port.
        for (text, path) in [("vsock-unix:/run/x:y.sock", "/run/x:y.sock"), ("vsock-unix:/s:", "/s:")] {
            let n = node(text).unwrap();
            assert_eq!(
                n.target,
                Target::VsockUnix {
                    path: path.into(),
                    port: 5315
                },
                "{text}"
            );
            assert_eq!(n.name(), None);
        }
        assert!(matches!(
            node("vsock-unix:relative.sock"),
            Err(AddressError::RelativeSocket { .. })
        ));
        assert!(node("vsock-unix:").is_err());
        assert!(node("vsock-unix:/s:99999999999").is_err());
    }

    #[test]
    fn listen_addresses_parse_and_print() {
        for s in ["0.0.0.0:5315", "[::1]:7", "vsock:5315"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
        assert_eq!("VSOCK:1".parse::<ListenAddr>().unwrap(), ListenAddr::Vsock { port: 1 });
        for bad in ["vsock:", "vsock:x", "vsock:4294967295", "1.2.3.4", "vsock"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
