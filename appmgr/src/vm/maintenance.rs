//! `cmappmgr vm maintenance on|off|status`: the original's
//! `cmdeployvpkg -m 1|0`, as a file in TKIT_DIR that the monitor looks for.

use std::io::Write;

use super::tkit::Toolkit;
use super::VmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    On,
    Off,
    Status,
}

pub fn run(action: Action, guest: &str, tkit: &Toolkit) -> Result<(), VmError> {
    let path = tkit.maintenance_file();
    match action {
        Action::On => {
            if !tkit.maintenance_allowed {
                return Err(VmError::Failed(format!(
                    "maintenance mode is not allowed for the package {guest} (MAINTENANCE_FLAG is no); \
                     set MAINTENANCE_FLAG to yes in the package configuration first"
                )));
            }
            if !tkit.tkit_dir.is_dir() {
                return Err(VmError::Config(format!(
                    "TKIT_DIR {} (from {}) is not a directory (the package directory of {guest}; see --tkit-dir)",
                    tkit.tkit_dir.display(),
                    tkit.tkit_dir_from
                )));
            }
            if tkit.maintenance_file_present() {
                tracing::info!(
                    "Maintenance mode is already enabled for the package {guest} ({})",
                    tkit.describe()
                );
                return Ok(());
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|source| VmError::File {
                    doing: "create the maintenance file",
                    path: path.clone(),
                    source,
                })?;
            let _ = writeln!(
                f,
                "maintenance mode enabled by cmappmgr vm maintenance on (pid {})",
                std::process::id()
            );
            tracing::info!(
                "Maintenance mode is enabled for the package {guest} ({}): its guest monitor no longer fails the package",
                tkit.describe()
            );
            Ok(())
        }
        Action::Off => match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(
                    "Maintenance mode is disabled for the package {guest} (removed {}): its guest monitor checks the guest again",
                    tkit.describe()
                );
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(
                    "Maintenance mode is already disabled for the package {guest} (no {})",
                    tkit.describe()
                );
                Ok(())
            }
            Err(source) => Err(VmError::File {
                doing: "remove the maintenance file",
                path,
                source,
            }),
        },
        Action::Status => {
            let present = tkit.maintenance_file_present();
            tracing::info!("maintenance file of the package {guest}: {}", tkit.describe());
            if present && !tkit.maintenance_allowed {
                println!("off (the maintenance file exists but MAINTENANCE_FLAG is no: it is ignored)");
            } else {
                println!("{}", if present { "on" } else { "off" });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tkit(dir: &std::path::Path, allowed: bool) -> Toolkit {
        Toolkit {
            tkit_dir: dir.to_path_buf(),
            maintenance_allowed: allowed,
            monitor_interval: None,
            tkit_dir_from: "--tkit-dir".into(),
            explicit: true,
        }
    }

    #[test]
    fn on_and_off_create_and_remove_the_file_and_repeat_safely() {
        let dir = tempfile::tempdir().unwrap();
        let t = tkit(dir.path(), true);
        run(Action::On, "vm1", &t).unwrap();
        assert!(dir.path().join("maintenance").exists());
        run(Action::On, "vm1", &t).unwrap();
        run(Action::Off, "vm1", &t).unwrap();
        assert!(!dir.path().join("maintenance").exists());
        run(Action::Off, "vm1", &t).unwrap();
    }

    #[test]
    fn on_is_refused_without_the_flag_or_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(Action::On, "vm1", &tkit(dir.path(), false)).unwrap_err();
        assert!(e.to_string().contains("MAINTENANCE_FLAG is no"), "{e}");
        assert!(!dir.path().join("maintenance").exists());
        let e = run(Action::On, "vm1", &tkit(&dir.path().join("nope"), true)).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
