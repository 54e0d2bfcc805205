//! Stored formats the control plane reads back: `change_log` rows written
//! by this and earlier builds (golden file tests/golden/change_log-v1.jsonl,
//! one `change` per line) and refused rows from a newer build.

use tandem_control::store::{CHANGE_FORMAT, Store};
use tandem_core::{ConfigChange, Revision};
use tandem_testkit::{Postgres, golden};

fn golden_file(version: u32) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/change_log-v{version}.jsonl"))
}

/// Fails when the row format changes: bump CHANGE_FORMAT, keep reading the
/// old version, and bless a new golden file with
/// `TANDEM_BLESS_GOLDEN=1 cargo nextest run -p tandem-control --test formats`.
#[test]
fn todays_writer_produces_the_current_golden_rows() {
    // What `Json(change)` binds: serde_json's compact form.
    let written: String = golden::changes()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap() + "\n")
        .collect();
    let path = golden_file(CHANGE_FORMAT);
    if std::env::var_os("TANDEM_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, &written).unwrap();
    }
    assert!(
        written == std::fs::read_to_string(&path).unwrap(),
        "change_log rows are no longer written as {}: a format change needs a new CHANGE_FORMAT and golden file",
        path.display()
    );
}

#[tokio::test]
async fn rows_of_every_version_read_back_and_a_newer_row_is_refused() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let store = Store::connect_lazy(&pg.url(), 2)?;
    store.migrate().await?;
    let expected = golden::changes();
    // Rows as every earlier build wrote them: no format_version column
    // value (rows from before the column get its default).
    for version in 1..=CHANGE_FORMAT {
        let golden = std::fs::read_to_string(golden_file(version))?;
        let lines: Vec<&str> = golden.lines().collect();
        assert_eq!(lines.len(), expected.len());
        let mut sql = String::from("DELETE FROM change_log;");
        for (i, line) in lines.iter().enumerate() {
            let (columns, v) = if version == 1 {
                ("revision, change", String::new())
            } else {
                ("revision, change, format_version", format!(", {version}"))
            };
            sql += &format!(
                "INSERT INTO change_log ({columns}) VALUES ({}, '{}'::jsonb{v});",
                i + 1,
                line.replace('\'', "''")
            );
        }
        pg.execute("postgres", &sql)?;
        let read: Vec<ConfigChange> = store
            .changes_since(Revision(0), 1000)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(read, expected, "change_log-v{version}.jsonl");
    }
    pg.execute(
        "postgres",
        &format!(
            "INSERT INTO change_log (revision, change, format_version) VALUES (100, '{{\"type\": \"from_the_future\"}}'::jsonb, {})",
            CHANGE_FORMAT + 1
        ),
    )?;
    let e = store.changes_since(Revision(99), 10).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "change_log row at revision 100 was written by a newer Tandem: format version {}, this build reads up to {CHANGE_FORMAT}",
            CHANGE_FORMAT + 1
        )
    );
    Ok(())
}
