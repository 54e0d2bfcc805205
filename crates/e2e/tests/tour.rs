//! README's five-minute tour, run as printed against `scripts/run-local.sh`
//! on ports nobody else uses: every command of the tour in one shell
//! session (only the ports shifted), what its comments promise checked,
//! then run-local's own promises (a component killed from outside is
//! reported and starts again by name; Ctrl-C leaves nothing behind). The
//! work is `scripts/readme-tour.py`, which can also be run by hand.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_tour_works_as_printed_against_run_local() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin_dir = tandem_testkit::bin_path("tandemctl")
        .parent()
        .expect("binaries live in a directory")
        .to_path_buf();
    for bin in [
        "tandem-control",
        "tandem-proxy",
        "tandem-agent",
        "widget-shop",
        "tandemctl",
    ] {
        assert!(
            bin_dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo build --workspace --bins` first",
            bin_dir.display()
        );
    }
    let out = Command::new("python3")
        .arg("scripts/readme-tour.py")
        .current_dir(&root)
        .env("TANDEM_LOCAL_BIN", &bin_dir)
        .output()
        .expect("python3 runs scripts/readme-tour.py (scripts/lib.sh ensure_python3 installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README tour failed ({}):\n{text}\n{errors}",
        out.status
    );
    // The summary lines, for whoever reads the test's output.
    for line in text.lines().filter(|l| l.starts_with("== ")) {
        println!("{line}");
    }
}
