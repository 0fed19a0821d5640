//! `cmappmgr vm validate`: the package's validation step for the guest.

use super::hypervisor::Hypervisor;
use super::VmError;

pub fn run(hv: &dyn Hypervisor, guest: &str, check_files: bool) -> Result<(), VmError> {
    let def = hv.definition(guest).map_err(|e| VmError::from_hv(guest, e))?;
    if !def.persistent {
        return Err(VmError::Failed(format!(
            "guest {guest} is a transient domain on this host: it would vanish when stopped and could not be \
             started again; define it persistently (virsh define)"
        )));
    }
    if check_files {
        let missing: Vec<String> = def
            .files()
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(VmError::Failed(format!(
                "guest {guest} refers to files missing on this host: {}",
                missing.join(", ")
            )));
        }
    }
    tracing::info!(
        "guest {guest} is defined on this host and usable ({} referenced files{})",
        def.files().len(),
        if check_files { " present" } else { ", not checked" }
    );
    Ok(())
}
