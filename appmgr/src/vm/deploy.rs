//! `cmappmgr vm deploy`: the original's `cmdeployvpkg -P GUEST [-x appmon=...]`
//! for a libvirt guest. It reads the domain from libvirt and writes a modular
//! Serviceguard package configuration in the shape of the guide's Appendix A:
//! the `tkit/vtn/vtn` module and its attributes, the guest-monitor service,
//! one cmappmgr service per `-x appmon=NAME:CMD:TIMEOUT:RESTART:HALT`, and the
//! storage the domain's disks live on (file systems and LVM volume groups the
//! package must mount or activate; what needs nothing is said in comments).
//!
//! The file goes to `$SGCONF/GUEST/GUEST.conf` (or `--output`); an existing
//! one is first moved to `$SGCONF/GUEST/.backup/`, as the original does. The
//! package directory is created without group or other write permission
//! (`cmapplyconf` refuses one that has it). Review the file, then
//! `cmcheckconf -P` and `cmapplyconf -P` it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::domain::{DiskSource, DomainXml};
use super::hypervisor::Hypervisor;
use super::tkit;
use super::VmError;

/// One `-x appmon=NAME:CMD:TIMEOUT:RESTART:HALT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMon {
    pub name: String,
    /// The run string in the guest.
    pub command: String,
    /// `-cmappserver_timeout`, seconds.
    pub timeout: u32,
    /// `service_restart`: `none`, `unlimited` or a count.
    pub restart: String,
    /// `service_halt_timeout`, seconds.
    pub halt: u32,
}

/// Why a `-x` value is not `appmon=NAME:CMD:TIMEOUT:RESTART:HALT`; each
/// message quotes the value as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppMonError {
    #[error("-x {value:?}: only appmon=NAME:CMD:TIMEOUT:RESTART:HALT is supported (no interactive mode, no merge)")]
    NotAppMon { value: String },
    #[error("-x {value:?}: expected appmon=NAME:CMD:TIMEOUT:RESTART:HALT")]
    Shape { value: String },
    #[error("-x {value:?}: {source}")]
    Name {
        value: String,
        #[source]
        source: NameError,
    },
    #[error("-x {value:?}: the command is empty")]
    EmptyCommand { value: String },
    #[error(
        "-x {value:?}: the command contains a double quote or a line break, which a package \
         configuration value cannot hold; put the command in a script in the guest"
    )]
    Unquotable { value: String },
    /// `field`: `timeout` or `halt timeout`.
    #[error("-x {value:?}: {field} {given:?} is not a positive number of seconds")]
    Seconds {
        value: String,
        field: &'static str,
        given: String,
    },
    #[error("-x {value:?}: restart {given:?} is not none, unlimited or a count")]
    Restart { value: String, given: String },
}

/// A name Serviceguard does not take for a package or a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid package or service name (1-39 letters, digits, '.', '_', '-')")]
pub struct NameError {
    pub name: String,
}

/// Parses the value of `-x`: `appmon=NAME:CMD:TIMEOUT:RESTART:HALT`. The
/// command may itself contain colons; the last three fields are split off
/// from the right.
pub fn parse_x(value: &str) -> Result<AppMon, AppMonError> {
    let spec = value
        .strip_prefix("appmon=")
        .ok_or_else(|| AppMonError::NotAppMon { value: value.into() })?;
    let shape = || AppMonError::Shape { value: value.into() };
    let (name, rest) = spec.split_once(':').ok_or_else(shape)?;
    let mut tail = rest.rsplitn(4, ':');
    let (halt, restart, timeout, command) = match (tail.next(), tail.next(), tail.next(), tail.next()) {
        (Some(h), Some(r), Some(t), Some(c)) => (h, r, t, c),
        _ => return Err(shape()),
    };
    check_name(name).map_err(|source| AppMonError::Name {
        value: value.into(),
        source,
    })?;
    let command = command.trim();
    if command.is_empty() {
        return Err(AppMonError::EmptyCommand { value: value.into() });
    }
    if command.contains(['"', '\n', '\r', '\0']) {
        return Err(AppMonError::Unquotable { value: value.into() });
    }
    let secs = |field: &'static str, v: &str| -> Result<u32, AppMonError> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| AppMonError::Seconds {
                value: value.into(),
                field,
                given: v.into(),
            })
    };
    let restart = match restart.trim() {
        r @ ("none" | "unlimited") => r.to_string(),
        r if r.parse::<u32>().is_ok() => r.to_string(),
        r => {
            return Err(AppMonError::Restart {
                value: value.into(),
                given: r.into(),
            })
        }
    };
    Ok(AppMon {
        name: name.to_string(),
        command: command.to_string(),
        timeout: secs("timeout", timeout)?,
        restart,
        halt: secs("halt timeout", halt)?,
    })
}

/// A Serviceguard package or service name: 1-39 characters, letters, digits,
/// `.`, `_`, `-`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 39
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NameError { name: name.into() })
    }
}

/// What the package should look like.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub appmons: Vec<AppMon>,
    /// `node_name` lines; `*` when empty.
    pub nodes: Vec<String>,
    /// The guest's cmappserver address for the services' `-node`.
    pub guest_node: Option<String>,
    pub tkit_dir: Option<PathBuf>,
    pub maintenance_flag: bool,
    pub monitor_interval: Duration,
    /// The cmappmgr the services run.
    pub cmappmgr: PathBuf,
    /// The libvirt URI, recorded as LIBVIRT_URI.
    pub uri: String,
    /// Where to write; `None`: `$SGCONF/GUEST/GUEST.conf`.
    pub output: Option<PathBuf>,
}

pub fn run(hv: &dyn Hypervisor, guest: &str, opts: &DeployOptions) -> Result<(), VmError> {
    check_name(guest).map_err(VmError::GuestName)?;
    let mut names = vec![guest.to_string()];
    for a in &opts.appmons {
        if names.contains(&a.name) {
            return Err(VmError::Config(format!(
                "service name {} is used twice (the guest monitor service is named {guest})",
                a.name
            )));
        }
        names.push(a.name.clone());
    }
    let def = hv.definition(guest).map_err(|e| VmError::from_hv(guest, e))?;
    if !def.persistent {
        tracing::warn!("guest {guest} is a transient domain: define it persistently (virsh define) on every node");
    }
    let mounts = Mounts::read();
    let text = render(guest, &def.domain, opts, &mounts, &bridge_subnets());
    let path = opts.output.clone().unwrap_or_else(|| tkit::package_conf_path(guest));
    write_conf(&path, &text)?;
    tracing::info!(
        "wrote the package configuration of guest {guest} to {}; review it, then cmcheckconf -P {0} and cmapplyconf -P {0}",
        path.display()
    );
    Ok(())
}

/// Writes `text` to `path`, moving an existing file to `.backup/` first.
fn write_conf(path: &Path, text: &str) -> Result<(), VmError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |doing: &'static str, p: &Path, source: std::io::Error| VmError::File {
        doing,
        path: p.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| fail("create the package directory", dir, e))?;
    }
    // cmapplyconf refuses a package directory writable by group or others.
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o022))
                .map_err(|e| fail("remove group/other write permission from", dir, e))?;
        }
    }
    if path.exists() {
        let backup = dir.join(".backup");
        std::fs::create_dir_all(&backup).map_err(|e| fail("create", &backup, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = backup.join(format!("{name}.{}", common::message::now_ms() / 1000));
        std::fs::rename(path, &to).map_err(|e| fail("back up", path, e))?;
        tracing::info!("the previous {} is now {}", path.display(), to.display());
    }
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    std::fs::write(&tmp, text).map_err(|e| fail("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("write", path, e))
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// The host's mount table.
#[derive(Debug, Clone, Default)]
pub struct Mounts(pub Vec<Mount>);

impl Mounts {
    fn read() -> Mounts {
        let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Mounts(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (source, target, fstype) = (f.next()?, f.next()?, f.next()?);
                    Some(Mount {
                        source: unescape_mount(source),
                        target: PathBuf::from(unescape_mount(target)),
                        fstype: fstype.to_string(),
                    })
                })
                .collect(),
        )
    }

    /// The mount a path lives on: the longest mount point that contains it
    /// (the last one mounted there, if several).
    fn of(&self, path: &Path) -> Option<&Mount> {
        self.0
            .iter()
            .filter(|m| path.starts_with(&m.target))
            .max_by_key(|m| m.target.components().count())
    }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// File systems every node mounts on its own (shared by design).
const SHARED_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "gfs2",
    "ocfs2",
    "glusterfs",
    "fuse.glusterfs",
    "ceph",
];

/// The volume group of an LVM logical volume path (`/dev/VG/LV` or
/// `/dev/mapper/VG-LV`, where `--` stands for a `-` in a name).
fn volume_group(dev: &Path) -> Option<String> {
    let s = dev.to_str()?;
    if let Some(name) = s.strip_prefix("/dev/mapper/") {
        let marker = name.replace("--", "\u{1}");
        let (vg, _) = marker.split_once('-')?;
        return Some(vg.replace('\u{1}', "-"));
    }
    let rest = s.strip_prefix("/dev/")?;
    let (vg, lv) = rest.split_once('/')?;
    let not_vg = [
        "disk", "mapper", "block", "md", "bus", "char", "cdrom", "input", "net", "pts", "shm", "zvol",
    ];
    (!lv.contains('/') && !lv.is_empty() && !not_vg.contains(&vg)).then(|| vg.to_string())
}

/// The storage section's attributes and notes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Storage {
    pub vgs: Vec<String>,
    /// (fs_name, fs_directory, fs_type)
    pub filesystems: Vec<(String, PathBuf, String)>,
    pub notes: Vec<String>,
}

/// What the package must activate or mount for the domain's disks.
pub fn plan_storage(domain: &DomainXml, mounts: &Mounts) -> Storage {
    let mut st = Storage::default();
    let add_vg = |st: &mut Storage, vg: String| {
        if !st.vgs.contains(&vg) {
            st.vgs.push(vg);
        }
    };
    for d in &domain.disks {
        let what = format!("{} {}", d.device, d.target.as_deref().unwrap_or("(no target)"));
        match &d.source {
            DiskSource::File(p) | DiskSource::Dir(p) => match mounts.of(p) {
                Some(m) if m.target == Path::new("/") => st.notes.push(format!(
                    "{what}: {} is on this node's root file system, not on shared storage: the package \
                     cannot fail over with it (move it to NFS, a cluster file system, or a file system \
                     on a volume group the package activates)",
                    p.display()
                )),
                Some(m) if SHARED_FS.contains(&m.fstype.as_str()) => st.notes.push(format!(
                    "{what}: {} is on {} ({} from {}), which every node mounts itself",
                    p.display(),
                    m.target.display(),
                    m.fstype,
                    m.source
                )),
                Some(m) => {
                    st.notes
                        .push(format!("{what}: {} is on {}", p.display(), m.target.display()));
                    if let Some(vg) = volume_group(Path::new(&m.source)) {
                        add_vg(&mut st, vg);
                    }
                    let fs = (m.source.clone(), m.target.clone(), m.fstype.clone());
                    if !st.filesystems.contains(&fs) {
                        st.filesystems.push(fs);
                    }
                }
                None => st
                    .notes
                    .push(format!("{what}: {} is on no mounted file system", p.display())),
            },
            DiskSource::Block(p) => match volume_group(p) {
                Some(vg) => {
                    st.notes
                        .push(format!("{what}: {} is in volume group {vg}", p.display()));
                    add_vg(&mut st, vg);
                }
                None => st.notes.push(format!(
                    "{what}: whole disk {}: must be visible to every node; nothing to activate",
                    p.display()
                )),
            },
            DiskSource::Network { protocol, name } => st.notes.push(format!(
                "{what}: network disk {protocol} {name}: reached from every node; nothing to activate"
            )),
            DiskSource::Volume { pool, volume } => st.notes.push(format!(
                "{what}: storage pool volume {pool}/{volume}: pool {pool} must be defined and active on every node"
            )),
            DiskSource::Empty => {}
            DiskSource::Other(t) => st.notes.push(format!("{what}: a disk of type {t}: check it by hand")),
        }
    }
    for f in &domain.boot_files {
        st.notes
            .push(format!("boot file {} must exist on every node", f.display()));
    }
    st
}

/// IPv4 subnets of the host's interfaces, by interface name.
fn bridge_subnets() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            let mask = a.netmask?.as_sockaddr_in()?.ip();
            Some((a.interface_name, Ipv4Addr::from(ip.to_bits() & mask.to_bits())))
        })
        .collect()
}

/// `name value`, aligned as cmmakepkg writes it.
fn attr(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "{name:<31} {value}");
}

/// The package configuration.
pub fn render(
    guest: &str,
    domain: &DomainXml,
    opts: &DeployOptions,
    mounts: &Mounts,
    subnets: &[(String, Ipv4Addr)],
) -> String {
    let storage = plan_storage(domain, mounts);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Serviceguard package configuration for the libvirt guest {guest}, written by\n\
         # `cmappmgr vm deploy` from its definition ({}).\n\
         # Review it (node_name, storage, monitored_subnet), then:\n\
         #   cmcheckconf -P {guest}.conf && cmapplyconf -P {guest}.conf\n",
        opts.uri
    );
    let _ = writeln!(o, "# Guest {guest}:");
    for d in &domain.disks {
        let _ = writeln!(
            o,
            "#   disk {} {}: {:?}",
            d.device,
            d.target.as_deref().unwrap_or("-"),
            d.source
        );
    }
    for i in &domain.interfaces {
        let _ = writeln!(
            o,
            "#   interface {} {} mac {} model {}",
            i.kind,
            i.source.as_deref().unwrap_or("-"),
            i.mac.as_deref().unwrap_or("-"),
            i.model.as_deref().unwrap_or("-")
        );
    }
    o.push('\n');
    attr(&mut o, "package_name", guest);
    attr(&mut o, "package_description", "\"Serviceguard Package\"");
    o.push('\n');
    let mut modules = vec![
        "sg/basic",
        "tkit/vtn/vtn",
        "sg/priority",
        "sg/failover",
        "sg/external",
        "sg/service",
        "sg/monitor_subnet",
    ];
    if !storage.vgs.is_empty() {
        modules.push("sg/volume_group");
    }
    if !storage.filesystems.is_empty() {
        modules.push("sg/filesystem");
    }
    for m in modules {
        attr(&mut o, "module_name", m);
        attr(&mut o, "module_version", "1");
    }
    o.push('\n');
    attr(&mut o, "package_type", "failover");
    o.push('\n');
    if opts.nodes.is_empty() {
        attr(&mut o, "node_name", "*");
    }
    for n in &opts.nodes {
        let _ = writeln!(o, "node_name {n}");
    }
    o.push('\n');
    for (k, v) in [
        ("auto_run", "yes"),
        ("node_fail_fast_enabled", "no"),
        ("run_script_timeout", "no_timeout"),
        ("halt_script_timeout", "no_timeout"),
        ("successor_halt_timeout", "no_timeout"),
        ("script_log_file", "$SGRUN/log/$SG_PACKAGE.log"),
    ] {
        attr(&mut o, k, v);
        o.push('\n');
    }
    for s in [
        "$SGCONF/scripts/tkit/vtn/tkit_module.sh",
        "$SGCONF/scripts/sg/external.sh",
        "$SGCONF/scripts/sg/service.sh",
    ] {
        attr(&mut o, "operation_sequence", s);
    }
    o.push('\n');
    attr(&mut o, "failover_policy", "configured_node");
    o.push('\n');
    attr(&mut o, "failback_policy", "manual");
    o.push('\n');

    o.push_str("# ********************** VTN TOOLKIT PARAMETERS**********************\n\n");
    let tkit_dir = opts.tkit_dir.clone().unwrap_or_else(|| tkit::sgconf().join(guest));
    let interval = opts.monitor_interval.as_secs_f64();
    for (k, v) in [
        ("TKIT_DIR", tkit_dir.display().to_string()),
        (
            "MAINTENANCE_FLAG",
            if opts.maintenance_flag { "yes" } else { "no" }.to_string(),
        ),
        ("MONITOR_INTERVAL", format!("{interval}")),
        ("GUEST_NAME", guest.to_string()),
        ("LIBVIRT_URI", opts.uri.clone()),
        ("START_TIMEOUT", "60".to_string()),
        ("STOP_TIMEOUT", "60".to_string()),
        ("GUEST_NODE", opts.guest_node.clone().unwrap_or_default()),
        ("CMAPPSERVER_TIMEOUT", "240".to_string()),
    ] {
        let value = if v.is_empty() || v.contains(char::is_whitespace) {
            format!("\"{v}\"")
        } else {
            v
        };
        attr(&mut o, &format!("tkit/vtn/vtn/{k}"), &value);
        o.push('\n');
    }
    attr(&mut o, "priority", "no_priority");
    o.push('\n');

    if !storage.vgs.is_empty() || !storage.filesystems.is_empty() || !storage.notes.is_empty() {
        o.push_str("# Storage of the guest's disks\n");
        for n in &storage.notes {
            let _ = writeln!(o, "# {n}");
        }
        for vg in &storage.vgs {
            attr(&mut o, "vg", vg);
        }
        for (name, dir, fstype) in &storage.filesystems {
            attr(&mut o, "fs_name", name);
            attr(&mut o, "fs_directory", &dir.display().to_string());
            attr(&mut o, "fs_type", fstype);
            attr(&mut o, "fs_mount_opt", "\"-o rw\"");
            attr(&mut o, "fs_umount_opt", "\"\"");
            attr(&mut o, "fs_fsck_opt", "\"\"");
        }
        o.push('\n');
    } else {
        o.push_str("# Storage: the guest has no disks.\n\n");
    }

    o.push_str("#VM Service\n\n");
    attr(&mut o, "service_name", guest);
    attr(
        &mut o,
        "service_cmd",
        "\"$SGCONF/scripts/tkit/vtn/tkit_module.sh guest_monitor\"",
    );
    attr(&mut o, "service_restart", "none");
    attr(&mut o, "service_fail_fast_enabled", "no");
    attr(&mut o, "service_halt_timeout", "300");
    o.push('\n');
    attr(&mut o, "local_lan_failover_allowed", "yes");
    o.push('\n');
    let mut subnet_found = false;
    for i in &domain.interfaces {
        let bridge = i.source.as_deref().unwrap_or("");
        match subnets.iter().find(|(name, _)| name == bridge) {
            Some((_, net)) if i.kind == "bridge" => {
                let _ = writeln!(o, "# the guest's interface on bridge {bridge}");
                attr(&mut o, "monitored_subnet", &net.to_string());
                subnet_found = true;
            }
            _ => {
                let _ = writeln!(
                    o,
                    "# interface {} {bridge}: no IPv4 subnet of this node found for it",
                    i.kind
                );
            }
        }
    }
    if !subnet_found {
        o.push_str("# monitored_subnet <the subnet the guest's network reaches this node on>\n");
    }
    o.push('\n');

    let node = opts.guest_node.as_deref().unwrap_or(guest);
    for a in &opts.appmons {
        o.push_str("#Guest Application Monitor\n\n");
        attr(&mut o, "service_name", &a.name);
        attr(
            &mut o,
            "service_cmd",
            &format!(
                "\"{} -node {node} -cmappserver_timeout {} -service {}\"",
                opts.cmappmgr.display(),
                a.timeout,
                a.command
            ),
        );
        attr(&mut o, "service_restart", &a.restart);
        attr(&mut o, "service_fail_fast_enabled", "no");
        attr(&mut o, "service_halt_timeout", &a.halt.to_string());
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::domain::Disk;

    #[test]
    fn appmon_options_parse_as_the_guide_writes_them() {
        assert_eq!(
            parse_x("appmon=app_mon:/application/directory/app-mon-script:10:1:300").unwrap(),
            AppMon {
                name: "app_mon".into(),
                command: "/application/directory/app-mon-script".into(),
                timeout: 10,
                restart: "1".into(),
                halt: 300,
            }
        );
        let a = parse_x("appmon=x:/usr/bin/X11/xclock -display 16.213.12.70:0.0:240:none:300").unwrap();
        assert_eq!(a.command, "/usr/bin/X11/xclock -display 16.213.12.70:0.0");
        assert_eq!((a.timeout, a.restart.as_str(), a.halt), (240, "none", 300));
        for (bad, why) in [
            ("merge", "only appmon="),
            ("appmon=x", "expected appmon="),
            ("appmon=x:/a:10:1", "expected appmon="),
            ("appmon=bad name:/a:10:1:300", "not a valid"),
            ("appmon=x:/a \"q\":10:1:300", "double quote"),
            ("appmon=x:/a:0:1:300", "timeout \"0\""),
            ("appmon=x:/a:10:often:300", "restart \"often\""),
            ("appmon=x: :10:1:300", "command is empty"),
        ] {
            let e = parse_x(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn storage_follows_where_the_disks_live() {
        let mounts = Mounts(vec![
            Mount {
                source: "/dev/sda1".into(),
                target: "/".into(),
                fstype: "ext4".into(),
            },
            Mount {
                source: "/dev/mapper/vg--guests-images".into(),
                target: "/srv/guests".into(),
                fstype: "xfs".into(),
            },
            Mount {
                source: "nas:/export".into(),
                target: "/mnt/nas".into(),
                fstype: "nfs4".into(),
            },
        ]);
        let disk = |source| Disk {
            device: "disk".into(),
            source,
            target: Some("vda".into()),
            optional: false,
            readonly: false,
            shareable: false,
        };
        let domain = DomainXml {
            name: "vm1".into(),
            disks: vec![
                disk(DiskSource::File("/srv/guests/vm1.qcow2".into())),
                disk(DiskSource::File("/srv/guests/vm1-data.raw".into())),
                disk(DiskSource::Block("/dev/vgdata/vm1".into())),
                disk(DiskSource::Block("/dev/disk/by-id/wwn-0x5000".into())),
                disk(DiskSource::File("/mnt/nas/vm1.img".into())),
                disk(DiskSource::File("/var/lib/libvirt/images/local.img".into())),
            ],
            ..Default::default()
        };
        let st = plan_storage(&domain, &mounts);
        assert_eq!(st.vgs, ["vg-guests", "vgdata"]);
        assert_eq!(
            st.filesystems,
            [(
                "/dev/mapper/vg--guests-images".to_string(),
                PathBuf::from("/srv/guests"),
                "xfs".to_string()
            )]
        );
        let notes = st.notes.join("\n");
        assert!(notes.contains("whole disk /dev/disk/by-id/wwn-0x5000"), "{notes}");
        assert!(notes.contains("/mnt/nas/vm1.img is on /mnt/nas (nfs4"), "{notes}");
        assert!(
            notes.contains("/var/lib/libvirt/images/local.img is on this node's root file system"),
            "{notes}"
        );
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::vm::domain::{Disk, Interface};

    #[test]
    fn storage_and_the_bridge_subnet_are_written_as_package_attributes() {
        let domain = DomainXml {
            name: "vm1".into(),
            disks: vec![Disk {
                device: "disk".into(),
                source: DiskSource::File("/srv/guests/vm1.qcow2".into()),
                target: Some("vda".into()),
                optional: false,
                readonly: false,
                shareable: false,
            }],
            interfaces: vec![Interface {
                kind: "bridge".into(),
                source: Some("br0".into()),
                mac: Some("52:54:00:00:00:01".into()),
                model: Some("virtio".into()),
            }],
            boot_files: vec![],
        };
        let mounts = Mounts(vec![Mount {
            source: "/dev/vgguests/images".into(),
            target: "/srv/guests".into(),
            fstype: "ext4".into(),
        }]);
        let opts = DeployOptions {
            appmons: vec![],
            nodes: vec![],
            guest_node: Some("vm1.example.com".into()),
            tkit_dir: Some("/etc/cmcluster/vm1".into()),
            maintenance_flag: false,
            monitor_interval: Duration::from_secs(15),
            cmappmgr: "/usr/sbin/cmappmgr".into(),
            uri: "qemu:///system".into(),
            output: None,
        };
        let text = render(
            "vm1",
            &domain,
            &opts,
            &mounts,
            &[("br0".into(), Ipv4Addr::new(192, 0, 2, 0))],
        );
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "module_name                     sg/volume_group",
            "module_name                     sg/filesystem",
            "node_name                       *",
            "tkit/vtn/vtn/MAINTENANCE_FLAG   no",
            "tkit/vtn/vtn/MONITOR_INTERVAL   15",
            "tkit/vtn/vtn/GUEST_NODE         vm1.example.com",
            "vg                              vgguests",
            "fs_name                         /dev/vgguests/images",
            "fs_directory                    /srv/guests",
            "fs_type                         ext4",
            "monitored_subnet                192.0.2.0",
        ] {
            assert!(lines.contains(&want), "no line {want:?} in:\n{text}");
        }
    }
}
