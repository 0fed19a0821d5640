//! The toolkit's package attributes and its maintenance file.
//!
//! The original's VM module adds three attributes to a package:
//! `tkit/vtn/vtn/TKIT_DIR` (the package directory, where the maintenance file
//! is created), `tkit/vtn/vtn/MAINTENANCE_FLAG` (whether the package may run in
//! maintenance mode; default yes) and `tkit/vtn/vtn/MONITOR_INTERVAL` (seconds
//! between monitor cycles; default 30). We take each from the command line
//! first, then from the package configuration file (the Serviceguard
//! `name value` format): the one named by `--package-conf`, or else the
//! package's own, `$SGCONF/GUEST/GUEST.conf` (where `cmappmgr vm deploy`
//! writes it; `SGCONF` defaults to `/etc/cmcluster`) if it exists; then the
//! default. The manual does not name the maintenance file; ours is
//! `TKIT_DIR/maintenance`. Every command that uses it says where it looked and
//! why (see [`Toolkit::tkit_dir_from`]); `maintenance` also follows a running
//! guest monitor (see [`super::registry`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::VmError;

/// Name of the maintenance file inside TKIT_DIR.
pub const MAINTENANCE_FILE: &str = "maintenance";

/// The default MONITOR_INTERVAL.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(30);

/// The attributes as they apply to one guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Toolkit {
    pub tkit_dir: PathBuf,
    /// MAINTENANCE_FLAG: the package may be put in maintenance mode.
    pub maintenance_allowed: bool,
    /// MONITOR_INTERVAL, when the package configuration sets it.
    pub monitor_interval: Option<Duration>,
    /// Where TKIT_DIR came from, for the log ("--tkit-dir", "TKIT_DIR in
    /// /etc/cmcluster/vm1/vm1.conf", "the default: ...").
    pub tkit_dir_from: String,
    /// TKIT_DIR was chosen on purpose: by `--tkit-dir` or in a package
    /// configuration named by `--package-conf`.
    pub explicit: bool,
}

/// Attributes given on the command line (each optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub tkit_dir: Option<PathBuf>,
    pub maintenance_flag: Option<bool>,
    pub package_conf: Option<PathBuf>,
}

impl Toolkit {
    /// Resolves the attributes for `guest`: command line, then the package
    /// configuration file, then the defaults (`/etc/cmcluster/<guest>`, yes).
    pub fn resolve(guest: &str, over: &Overrides) -> Result<Toolkit, VmError> {
        let own = package_conf_path(guest);
        let conf = match &over.package_conf {
            Some(path) => Some(path.clone()),
            None => own.is_file().then(|| own.clone()),
        };
        let from_file = match &conf {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| VmError::File {
                    doing: "read package configuration",
                    path: path.clone(),
                    source,
                })?;
                parse_package_conf(path, &text)?
            }
            None => PackageAttrs::default(),
        };
        let default_dir = sgconf().join(guest);
        let (tkit_dir, tkit_dir_from, explicit) = match (&over.tkit_dir, from_file.tkit_dir, &conf) {
            (Some(d), _, _) => (d.clone(), "--tkit-dir".to_string(), true),
            (None, Some(d), Some(c)) => (d, format!("TKIT_DIR in {}", c.display()), over.package_conf.is_some()),
            (None, _, Some(c)) => (
                default_dir,
                format!("the default: TKIT_DIR is not set in {}", c.display()),
                over.package_conf.is_some(),
            ),
            (None, _, None) => (
                default_dir,
                format!("the default: no package configuration at {}", own.display()),
                false,
            ),
        };
        Ok(Toolkit {
            tkit_dir,
            maintenance_allowed: over.maintenance_flag.or(from_file.maintenance_flag).unwrap_or(true),
            monitor_interval: from_file.monitor_interval,
            tkit_dir_from,
            explicit,
        })
    }

    /// "FILE (TKIT_DIR from WHERE)", for log lines.
    pub fn describe(&self) -> String {
        format!(
            "{} (TKIT_DIR from {})",
            self.maintenance_file().display(),
            self.tkit_dir_from
        )
    }

    pub fn maintenance_file(&self) -> PathBuf {
        self.tkit_dir.join(MAINTENANCE_FILE)
    }

    /// Whether the maintenance file exists. An unreadable directory counts
    /// as "no file" (monitoring goes on), with a warning.
    pub fn maintenance_file_present(&self) -> bool {
        let path = self.maintenance_file();
        match path.try_exists() {
            Ok(present) => present,
            Err(e) => {
                tracing::warn!(
                    "cannot check the maintenance file {}: {e}; assuming it is absent",
                    path.display()
                );
                false
            }
        }
    }
}

/// `$SGCONF`, or `/etc/cmcluster`: where Serviceguard keeps packages.
pub fn sgconf() -> PathBuf {
    std::env::var_os("SGCONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/cmcluster"))
}

/// The package's own configuration: `$SGCONF/GUEST/GUEST.conf`.
pub fn package_conf_path(guest: &str) -> PathBuf {
    sgconf().join(guest).join(format!("{guest}.conf"))
}

/// The toolkit attributes found in a package configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
struct PackageAttrs {
    tkit_dir: Option<PathBuf>,
    maintenance_flag: Option<bool>,
    monitor_interval: Option<Duration>,
}

/// Reads the toolkit attributes from a Serviceguard package configuration:
/// `name value` lines, `#` comments, values optionally in double quotes. The
/// attribute name may carry its module prefix (`tkit/vtn/vtn/TKIT_DIR`, the
/// way `cmmakepkg` writes it) or not (`TKIT_DIR`). Other lines are ignored.
fn parse_package_conf(path: &Path, text: &str) -> Result<PackageAttrs, VmError> {
    let mut attrs = PackageAttrs::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        let attr = match name.rsplit_once('/') {
            Some((prefix, attr)) if prefix.starts_with("tkit/") => attr,
            Some(_) => continue,
            None => name,
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let bad = |what: &str| VmError::Config(format!("{}:{}: {attr}: {what}", path.display(), n + 1));
        match attr {
            "TKIT_DIR" => {
                if value.is_empty() {
                    return Err(bad("empty directory"));
                }
                attrs.tkit_dir = Some(PathBuf::from(value));
            }
            "MAINTENANCE_FLAG" => {
                attrs.maintenance_flag = Some(common::args::yes_no(value).ok_or_else(|| bad("expected yes or no"))?);
            }
            "MONITOR_INTERVAL" => {
                let interval = common::duration::positive(value).map_err(|e| bad(&e.to_string()))?;
                attrs.monitor_interval = Some(interval);
            }
            _ => {}
        }
    }
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
package_name                    slvm1
# ********************** VTN TOOLKIT PARAMETERS**********************

tkit/vtn/vtn/TKIT_DIR           /etc/cmcluster/slvm1

tkit/vtn/vtn/MAINTENANCE_FLAG   no

tkit/vtn/vtn/MONITOR_INTERVAL   15
service_cmd                     "$SGCONF/scripts/tkit/vtn/tkit_module.sh guest_monitor"
"#;

    #[test]
    fn reads_the_vtn_attributes_from_a_package_configuration() {
        let a = parse_package_conf(Path::new("pkg.conf"), CONF).unwrap();
        assert_eq!(
            a,
            PackageAttrs {
                tkit_dir: Some("/etc/cmcluster/slvm1".into()),
                maintenance_flag: Some(false),
                monitor_interval: Some(Duration::from_secs(15)),
            }
        );
    }

    #[test]
    fn a_bad_value_names_the_file_and_line() {
        let e = parse_package_conf(Path::new("pkg.conf"), "x y\ntkit/vtn/vtn/MAINTENANCE_FLAG maybe\n").unwrap_err();
        assert_eq!(e.to_string(), "pkg.conf:2: MAINTENANCE_FLAG: expected yes or no");
    }

    #[test]
    fn command_line_wins_then_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pkg.conf");
        std::fs::write(&conf, CONF).unwrap();
        let t = Toolkit::resolve("cmapp-unit-no-such-guest", &Overrides::default()).unwrap();
        assert_eq!(t.tkit_dir, Path::new("/etc/cmcluster/cmapp-unit-no-such-guest"));
        assert!(!t.explicit);
        assert!(
            t.tkit_dir_from.starts_with("the default: no package configuration at"),
            "{}",
            t.tkit_dir_from
        );
        assert!(t.maintenance_allowed);
        assert_eq!(
            t.maintenance_file(),
            Path::new("/etc/cmcluster/cmapp-unit-no-such-guest/maintenance")
        );

        let over = Overrides {
            package_conf: Some(conf.clone()),
            ..Default::default()
        };
        let t = Toolkit::resolve("vm1", &over).unwrap();
        assert_eq!(t.tkit_dir, Path::new("/etc/cmcluster/slvm1"));
        assert!(t.explicit);
        assert_eq!(
            t.tkit_dir_from,
            format!("TKIT_DIR in {}", dir.path().join("pkg.conf").display())
        );
        assert!(!t.maintenance_allowed);
        assert_eq!(t.monitor_interval, Some(Duration::from_secs(15)));

        let over = Overrides {
            package_conf: Some(conf),
            maintenance_flag: Some(true),
            tkit_dir: Some("/tmp/x".into()),
        };
        let t = Toolkit::resolve("vm1", &over).unwrap();
        assert_eq!(t.tkit_dir, Path::new("/tmp/x"));
        assert_eq!(t.tkit_dir_from, "--tkit-dir");
        assert!(t.maintenance_allowed);
    }
}
