//! Sandbox runs against the real kernel and libcontainer. They need root and a busybox-static
//! binary at /bin/busybox.

use super::testutil::{TestEnv, require_root, run_text};
use crate::profile::Profile;

#[test]
fn echo_hello() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, stderr) = run_text(env.request(&["echo", "hello"], Profile::Moderate));
    assert_eq!(stdout, "hello\n");
    assert_eq!(stderr, "");
    assert_eq!(status, 0);
}
