//! Block devices for the disk probe's tests: a loop device over a sparse
//! file (truncate the file and reads past its new end fail with EIO), and a
//! FUSE filesystem whose one file blocks every read while the test says so
//! (`fixtures/hangfs.py`), to put a loop device over. Both undo themselves
//! on drop: the loop device is detached, the filesystem released and
//! unmounted, its process killed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::output::Lines;

/// Creates a sparse file of `size` bytes at `path`.
pub fn sparse_file(path: &Path, size: u64) -> PathBuf {
    File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("create the backing file");
    path.to_path_buf()
}

/// A loop device (`/dev/loopN`) over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    /// `losetup -f --show FILE`: the first free loop device, over `file`.
    pub fn attach(file: &Path) -> LoopDev {
        crate::require_root("network namespaces / loop devices");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup -f --show {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().into();
        LoopDev { path }
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // With readers still inside, the kernel detaches at the last close.
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// `fixtures/hangfs.py` mounted in a directory: `image` reads as zeros,
/// except that every read blocks between [`HangFs::hang`] and
/// [`HangFs::release`].
#[derive(Debug)]
pub struct HangFs {
    pub mountpoint: PathBuf,
    pub image: PathBuf,
    control: PathBuf,
    child: Child,
    log: Lines,
}

/// The interpreter that apt's python3-fusepy is installed for (a `python3`
/// earlier on PATH, say pyenv's, may not have it).
const PYTHON: &str = "/usr/bin/python3";

impl HangFs {
    /// Mounts the filesystem under `dir` with an image of `size` bytes.
    pub fn mount(dir: &Path, size: u64) -> HangFs {
        crate::require_root("network namespaces / loop devices");
        let has_fusepy = Command::new(PYTHON)
            .args(["-c", "import fusepy"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_fusepy && Path::new("/dev/fuse").exists(),
            "this test needs FUSE and fusepy: apt-get install fuse3 python3-fusepy"
        );
        let mountpoint = dir.join("hangfs");
        std::fs::create_dir(&mountpoint).expect("create the mount point");
        let control = dir.join("hang");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hangfs.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(&mountpoint)
            .arg(size.to_string())
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hangfs.py");
        let log = Lines::default();
        log.follow(child.stdout.take().unwrap());
        log.follow(child.stderr.take().unwrap());
        let image = mountpoint.join("disk.img");
        let fs = HangFs {
            mountpoint,
            image,
            control,
            child,
            log,
        };
        // Nothing announces the mount: wait for the image to show up in it.
        let mounted = crate::wait_until(crate::WAIT, || fs.image.exists() || fs.log.wait_closed(Duration::ZERO));
        assert!(mounted && fs.image.exists(), "hangfs did not mount:\n{}", fs.log.text());
        fs
    }

    /// From now on every read of the image blocks.
    pub fn hang(&self) {
        File::create(&self.control).expect("create the hang control file");
    }

    /// Lets blocked and later reads through.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.control);
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        self.release();
        // A loop device detached a moment ago may still hold the image open.
        let unmounted = crate::wait_until(Duration::from_secs(5), || {
            Command::new("umount")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        if !crate::wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
