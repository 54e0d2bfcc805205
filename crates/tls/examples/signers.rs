//! Handshake signatures per CPU-second, ring against AWS-LC: the figures
//! behind `tandem_tls::signing`'s choice of library per key type.
//!
//! A full TLS handshake costs the server one signature (TLS 1.3's
//! CertificateVerify: RSA-PSS-SHA256 or ECDSA P-256 SHA-256 for the
//! clients of today). This signs a message of that size with keys made at
//! start, each signer for about `SECONDS` of its thread's CPU time per
//! round, the signers interleaved, and prints the median over `ROUNDS`
//! rounds. CPU time is the thread's own (`/proc/thread-self/schedstat`),
//! so the figures hold on a busy machine better than rates would. The
//! signers are rustls's signing keys, as a handshake uses them: `ring`,
//! rustls's ring provider's; `tandem`, those `tandem_tls::signing::load`
//! makes (AWS-LC's for RSA); and AWS-LC's ECDSA, which tandem does not use.
//!
//! Usage: `signers [SECONDS [ROUNDS]]` (default 1 s, 5 rounds); build it
//! with `--release`.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use rustls::SignatureScheme;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use tandem_tls::signing;

type Sign = Box<dyn Fn(&[u8])>;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(1.0, |s| s.parse().expect("SECONDS"));
    let rounds: usize = args.next().map_or(5, |s| s.parse().expect("ROUNDS"));

    let rsa_pkcs8 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .and_then(|k| k.as_der())
        .expect("an RSA-2048 key")
        .as_ref()
        .to_vec();
    let p256 = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let ec_pkcs8 =
        ring::signature::EcdsaKeyPair::generate_pkcs8(p256, &ring::rand::SystemRandom::new())
            .expect("a P-256 key")
            .as_ref()
            .to_vec();

    // Keys as rustls signs with them: ring's (rustls's ring provider, the
    // proxy's before AWS-LC) and the ones tandem_tls::signing makes.
    let signer = |key: Result<Arc<dyn SigningKey>, rustls::Error>, scheme| -> Sign {
        let signer = key
            .expect("a signing key")
            .choose_scheme(&[scheme])
            .expect("a signer");
        Box::new(move |m| {
            signer.sign(m).expect("a signature");
        })
    };
    let (rsa, ec) = (pkcs8(&rsa_pkcs8), pkcs8(&ec_pkcs8));
    let (pss, p256_sha256) = (
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::ECDSA_NISTP256_SHA256,
    );
    let ring_key = rustls::crypto::ring::sign::any_supported_type;
    // AWS-LC's ECDSA, which tandem does not use: the figure that says so.
    let lc_ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &ec_pkcs8,
    )
    .expect("aws-lc: P-256 key");
    let signers: Vec<(&str, Sign)> = vec![
        ("RSA-2048 PSS-SHA256  ring", signer(ring_key(&rsa), pss)),
        (
            "RSA-2048 PSS-SHA256  tandem",
            signer(signing::load(&rsa), pss),
        ),
        (
            "ECDSA P-256 SHA256   ring",
            signer(ring_key(&ec), p256_sha256),
        ),
        (
            "ECDSA P-256 SHA256   tandem",
            signer(signing::load(&ec), p256_sha256),
        ),
        (
            "ECDSA P-256 SHA256   aws-lc",
            Box::new(move |m| {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                lc_ec.sign(&rng, m).expect("aws-lc: ECDSA signature");
            }),
        ),
    ];

    // What TLS 1.3's CertificateVerify signs: 64 spaces, a context
    // string, a zero byte and the transcript's SHA-256.
    let mut message = vec![b' '; 64];
    message.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    message.extend_from_slice(&[0x5a; 32]);

    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); signers.len()];
    for round in 1..=rounds {
        eprint!("round {round}/{rounds}\r");
        for (i, (_, sign)) in signers.iter().enumerate() {
            per_second[i].push(rate(sign, &message, seconds));
        }
    }
    println!(
        "{:<30} {:>12} {:>10}   ({rounds} rounds of {seconds} s CPU)",
        "signer", "sign/CPU-s", "us/sign"
    );
    for ((name, _), rates) in signers.iter().zip(&mut per_second) {
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!("{name:<30} {median:>12.0} {:>10.1}", 1e6 / median);
    }
}

fn pkcs8(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

/// Signatures per second of this thread's CPU time.
fn rate(sign: &Sign, message: &[u8], seconds: f64) -> f64 {
    let budget = (seconds * 1e9) as u64;
    let start = cpu_ns();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            sign(message);
        }
        n += 16;
        let spent = cpu_ns() - start;
        if spent >= budget {
            return n as f64 / (spent as f64 / 1e9);
        }
    }
}

/// This thread's time on a CPU, in nanoseconds.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat");
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat's first field: nanoseconds on a CPU")
}
