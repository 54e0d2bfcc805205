//! `tandemctl certs`: a development CA and the certificates Tandem's
//! components present to each other (mTLS), written into a directory. No
//! control plane is involved.

use std::io::Write;
use std::path::{Path, PathBuf};

use tandem_tls::issue::{Ca, Issued};

use crate::cli::{CertsCommand, CertsCreate, CertsInit};
use crate::error::CtlError;

/// The CA's files in a certificates directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// One certificate to write: its role, name and the hosts it serves as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub role: String,
    pub name: String,
    pub hosts: Vec<String>,
}

pub fn run(command: CertsCommand, out: &mut (impl Write + ?Sized)) -> Result<(), CtlError> {
    match command {
        CertsCommand::Init(args) => init(&args, out),
        CertsCommand::Create(args) => create(&args, out),
    }
}

/// `--replica NAME[=HOST,HOST...]`: the name, and the hosts it is reached
/// at besides its own name, `localhost` and 127.0.0.1.
pub fn replica(spec: &str) -> Result<Planned, String> {
    let (name, hosts) = match spec.split_once('=') {
        Some((name, hosts)) => (name.trim(), hosts),
        None => (spec.trim(), ""),
    };
    if name.is_empty() {
        return Err(format!("--replica {spec:?}: expected NAME[=HOST,HOST...]"));
    }
    let mut all = vec![name.to_string(), "localhost".into(), "127.0.0.1".into()];
    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !all.iter().any(|a| a == h) {
            all.push(h.to_string());
        }
    }
    Ok(Planned {
        role: "replica".into(),
        name: name.to_string(),
        hosts: all,
    })
}

/// What `certs init` writes, from its flags (defaults: control-1..3,
/// proxy-1..2, agent-1..3, admin, operator).
pub fn plan(args: &CertsInit) -> Result<Vec<Planned>, String> {
    let or = |given: &[String], default: &[&str]| -> Vec<String> {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    let mut plan = Vec::new();
    for spec in or(&args.replica, &["control-1", "control-2", "control-3"]) {
        plan.push(replica(&spec)?);
    }
    for (role, names) in [
        ("proxy", or(&args.proxy, &["proxy-1", "proxy-2"])),
        ("agent", or(&args.agent, &["agent-1", "agent-2", "agent-3"])),
        ("admin", or(&args.admin, &["admin"])),
        ("operator", or(&args.operator, &["operator"])),
    ] {
        for name in names {
            plan.push(Planned {
                role: role.into(),
                name: name.trim().to_string(),
                hosts: Vec::new(),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &plan {
        if p.name == "ca" || !seen.insert(p.name.as_str()) {
            return Err(format!(
                "the name {:?} appears twice (or is \"ca\"): each certificate is written as NAME.pem",
                p.name
            ));
        }
    }
    Ok(plan)
}

fn usage(e: impl std::fmt::Display) -> CtlError {
    CtlError::Usage(e.to_string())
}

fn cert_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// Refuses to overwrite without `--force`, naming the first file in the way.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CtlError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(usage(format!(
            "{} exists: nothing written (pass --force to replace the files)",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so
/// a component reloading the file never reads half of it; keys are 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| usage(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn write_pair(
    dir: &Path,
    p: &Planned,
    issued: &Issued,
    out: &mut (impl Write + ?Sized),
) -> Result<(), CtlError> {
    let (cert, key) = cert_paths(dir, &p.name);
    write_file(&cert, &issued.cert_pem, false)?;
    write_file(&key, &issued.key_pem, true)?;
    let hosts = if p.hosts.is_empty() {
        String::new()
    } else {
        format!(" hosts={}", p.hosts.join(","))
    };
    writeln!(
        out,
        "wrote {} and {}: {}{hosts}",
        cert.display(),
        key.display(),
        tandem_tls::peer::identity_uri(&p.role, &p.name)
    )?;
    Ok(())
}

fn init(args: &CertsInit, out: &mut (impl Write + ?Sized)) -> Result<(), CtlError> {
    let plan = plan(args).map_err(usage)?;
    let dir = &args.dir;
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let mut paths = vec![ca_cert.clone(), ca_key.clone()];
    for p in &plan {
        let (c, k) = cert_paths(dir, &p.name);
        paths.extend([c, k]);
    }
    refuse_existing(
        &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        args.force,
    )?;
    std::fs::create_dir_all(dir)
        .map_err(|e| usage(format!("cannot create {}: {e}", dir.display())))?;
    let ca = Ca::generate("Tandem development CA").map_err(usage)?;
    // Issue everything before writing anything: a bad name leaves no half
    // directory behind.
    let issued = plan
        .iter()
        .map(|p| ca.issue(&p.role, &p.name, &p.hosts, args.days))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    write_file(&ca_cert, &ca.cert_pem, false)?;
    write_file(&ca_key, &ca.key_pem(), true)?;
    writeln!(
        out,
        "wrote {} and {}: the development CA (keep ca-key.pem off the machines that run components)",
        ca_cert.display(),
        ca_key.display()
    )?;
    for (p, i) in plan.iter().zip(&issued) {
        write_pair(dir, p, i, out)?;
    }
    Ok(())
}

fn create(args: &CertsCreate, out: &mut (impl Write + ?Sized)) -> Result<(), CtlError> {
    let read = |name: &str| {
        let path = args.ca.join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
    };
    let ca = Ca::load(&read(CA_CERT)?, &read(CA_KEY)?)
        .map_err(|e| usage(format!("the CA in {}: {e}", args.ca.display())))?;
    let p = if args.role == "replica" {
        let mut p = replica(&args.name).map_err(usage)?;
        for h in &args.host {
            if !p.hosts.contains(h) {
                p.hosts.push(h.clone());
            }
        }
        p
    } else {
        Planned {
            role: args.role.clone(),
            name: args.name.clone(),
            hosts: args.host.clone(),
        }
    };
    let dir = args.out.as_ref().unwrap_or(&args.ca);
    let (cert, key) = cert_paths(dir, &p.name);
    refuse_existing(&[&cert, &key], args.force)?;
    let issued = ca
        .issue(&p.role, &p.name, &p.hosts, args.days)
        .map_err(usage)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| usage(format!("cannot create {}: {e}", dir.display())))?;
    write_pair(dir, &p, &issued, out)
}
