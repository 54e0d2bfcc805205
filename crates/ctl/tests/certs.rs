//! `tandemctl certs`: the directory it writes, its refusal to overwrite,
//! and the certificates in use: a real `tandem-control` serving mTLS with
//! them, `tandemctl` presenting the admin certificate (served), none
//! (refused before connecting) or one from another CA (refused).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tandem_testkit::{ADMIN_TOKEN, ControlPlane, ControlPlaneOptions, Postgres, bin_path};

fn tandemctl(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = Command::new(bin_path("tandemctl"))
        .args(args)
        .env_remove("TANDEM_TLS_CA_FILE")
        .env_remove("TANDEM_TLS_CERT_FILE")
        .env_remove("TANDEM_TLS_KEY_FILE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("tandemctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_env(ca_dir: &Path, dir: &Path, name: &str) -> Vec<(&'static str, String)> {
    let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    vec![
        ("TANDEM_TLS_CA_FILE", s(ca_dir.join("ca.pem"))),
        ("TANDEM_TLS_CERT_FILE", s(dir.join(format!("{name}.pem")))),
        (
            "TANDEM_TLS_KEY_FILE",
            s(dir.join(format!("{name}-key.pem"))),
        ),
    ]
}

#[tokio::test]
async fn certs_init_writes_a_ca_and_a_certificate_per_component_that_mtls_accepts()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();
    let (code, stdout, stderr) = tandemctl(&["certs", "init", d], &[]);
    assert_eq!(code, 0, "{stderr}");
    // The CA and control-1..3, proxy-1..2, agent-1..3, admin, operator.
    assert_eq!(stdout.lines().count(), 11, "{stdout}");
    assert!(
        stdout.contains("spiffe://tandem/replica/control-1 hosts=control-1,localhost,127.0.0.1")
    );
    assert!(stdout.contains("spiffe://tandem/operator/operator"));
    for key in ["ca-key.pem", "admin-key.pem", "control-3-key.pem"] {
        let mode = std::fs::metadata(dir.join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    // Again: refused, nothing replaced.
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let (code, _, stderr) = tandemctl(&["certs", "init", d], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("ca.pem"))?, ca);

    // One more, signed by the same CA.
    let (code, stdout, stderr) = tandemctl(
        &[
            "certs", "create", "--ca", d, "--role", "agent", "--name", "agent-9",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("spiffe://tandem/agent/agent-9"), "{stdout}");
    let (code, _, stderr) = tandemctl(
        &[
            "certs", "create", "--ca", d, "--role", "root", "--name", "x",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("role"), "{stderr}");

    // A replica serving mTLS with control-1's certificate.
    let pg = Postgres::start()?;
    let env = tls_env(&dir, &dir, "control-1")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain([("TANDEM_INSECURE_PLAINTEXT".to_string(), "false".to_string())])
        .collect();
    let cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            env,
            ..Default::default()
        },
    )
    .await?;
    let endpoint = format!("https://{}", cp.grpc);
    let args = [
        "--endpoint",
        &endpoint,
        "--token",
        ADMIN_TOKEN,
        "cluster",
        "status",
    ];

    let (code, stdout, stderr) = tandemctl(&args, &tls_env(&dir, &dir, "admin"));
    assert_eq!(code, 0, "the admin certificate is served: {stderr}");
    assert!(!stdout.is_empty());

    let (code, _, stderr) = tandemctl(&args, &[]);
    assert_eq!(code, 2, "https:// without a certificate: {stderr}");
    assert!(stderr.contains("TANDEM_TLS_CA_FILE"), "{stderr}");

    let other = tmp.path().join("other");
    let (code, _, _) = tandemctl(&["certs", "init", other.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    let (code, _, stderr) = tandemctl(&args, &tls_env(&dir, &other, "admin"));
    assert_eq!(code, 8, "another CA's certificate is refused: {stderr}");

    // Plain TCP to the mTLS port answers nothing.
    let plain = format!("http://{}", cp.grpc);
    let (code, _, stderr) = tandemctl(
        &[
            "--endpoint",
            &plain,
            "--token",
            ADMIN_TOKEN,
            "cluster",
            "status",
        ],
        &[],
    );
    assert_ne!(code, 0, "{stderr}");
    Ok(())
}
