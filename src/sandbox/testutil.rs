//! Test helpers: a busybox root filesystem in two layers and requests that run in it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{RunError, RunOutcome, SandboxRequest, StdioMode, run_with_stdio};
use crate::profile::Profile;
use crate::spec::ImageRunConfig;

/// Serializes container runs in tests. `ContainerBuilder::build` forks with a raw `clone3`, which
/// is only safe while no other thread holds an allocator lock. One run at a time keeps the other
/// runs' reader threads out of that window.
static RUN_LOCK: Mutex<()> = Mutex::new(());

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// `/etc/passwd` of the upper test layer.
pub(crate) const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                                 app:x:1000:1000:App:/home/app:/bin/sh\n\
                                 nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// `/etc/group` of the upper test layer.
pub(crate) const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n";

/// Returns whether the tests may use root-only features. Without root they fail under
/// `CI=true` and are skipped with a message otherwise.
pub(crate) fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("sandbox tests need root, and CI=true does not allow skipping them");
    }
    eprintln!("skipping: sandbox tests need root");
    false
}

/// Takes the lock that serializes container runs; a panicked holder does not block others.
pub(crate) fn run_lock() -> MutexGuard<'static, ()> {
    RUN_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A temporary directory with the two test layers, a state root and a sandboxes directory.
pub(crate) struct TestEnv {
    pub dir: tempfile::TempDir,
    /// Layers, topmost first.
    pub lowers: Vec<PathBuf>,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ak")
            .tempdir()
            .expect("create test directory");
        let lowers = test_rootfs(dir.path());
        TestEnv { dir, lowers }
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Returns a request for `command` in the busybox image with a fresh id.
    pub fn request(&self, command: &[&str], profile: Profile) -> SandboxRequest {
        let id = format!(
            "t{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::SeqCst)
        );
        SandboxRequest {
            sandbox_dir: self.dir.path().join("sandboxes").join(&id),
            id,
            state_root: self.state_root(),
            lower_dirs: self.lowers.clone(),
            image: ImageRunConfig::default(),
            command: command.iter().map(|arg| arg.to_string()).collect(),
            profile,
            overrides: Default::default(),
            timeout: None,
            image_name: "busybox".to_string(),
            keep: false,
            tty: false,
            interactive: None,
            seccomp_cache: Some(self.dir.path().join("seccomp")),
        }
    }
}

/// Builds a busybox root filesystem as two layers below `dir` and returns them topmost first.
///
/// The base layer contains `/bin/busybox` from the host (Debian's `busybox-static`), a symlink
/// for each applet and the usual empty directories. The top layer contains `/etc/passwd`,
/// `/etc/group`, a non-executable `/etc/data.txt` and an `/etc/motd` that hides the base
/// layer's.
pub(crate) fn test_rootfs(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("base");
    let top = dir.join("top");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "tmp",
    ] {
        std::fs::create_dir_all(base.join(sub)).expect("create base layer directory");
    }
    std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    std::fs::copy("/bin/busybox", base.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .expect("run busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = base.join(applet);
        if applet.is_empty() || link.exists() {
            continue;
        }
        std::fs::create_dir_all(link.parent().unwrap()).expect("create applet directory");
        std::os::unix::fs::symlink("/bin/busybox", &link).expect("create applet symlink");
    }
    std::fs::write(base.join("etc/motd"), "base\n").expect("write base motd");

    std::fs::create_dir_all(top.join("etc")).expect("create top layer etc");
    std::fs::write(top.join("etc/passwd"), PASSWD).expect("write passwd");
    std::fs::write(top.join("etc/group"), GROUP).expect("write group");
    std::fs::write(top.join("etc/data.txt"), "layer-two\n").expect("write data.txt");
    std::fs::write(top.join("etc/motd"), "top\n").expect("write top motd");
    vec![top, base]
}

/// Runs `request` with captured stdout and stderr, one run at a time.
pub(crate) fn run_captured(request: SandboxRequest) -> Result<RunOutcome, RunError> {
    let _guard = run_lock();
    run_with_stdio(request, StdioMode::Capture { stdin: None })
}

/// Runs `request`, expects it to produce an exit status and returns (status, stdout, stderr).
pub(crate) fn run_text(request: SandboxRequest) -> (i32, String, String) {
    let outcome = run_captured(request).unwrap_or_else(|error| panic!("run failed: {error}"));
    (
        outcome.status,
        String::from_utf8_lossy(&outcome.stdout).into_owned(),
        String::from_utf8_lossy(&outcome.stderr).into_owned(),
    )
}

/// Returns path → (mode, size, mtime, content or symlink target) for everything below `dir`.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read layer directory") {
            let path = entry.expect("read layer entry").path();
            let metadata = std::fs::symlink_metadata(&path).expect("stat layer entry");
            let content = if metadata.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .expect("read symlink")
                    .into_os_string()
                    .into_encoded_bytes()
            } else if metadata.is_file() {
                std::fs::read(&path).expect("read layer file")
            } else {
                pending.push(path.clone());
                Vec::new()
            };
            let key = path.strip_prefix(dir).unwrap().to_path_buf();
            entries.insert(
                key,
                (metadata.mode(), metadata.size(), metadata.mtime(), content),
            );
        }
    }
    entries
}
