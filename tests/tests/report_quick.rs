//! The quick report end to end, through the library API: it runs AdamW, K-FAC and CG-FAC for one
//! seed, then writes `REPORT.md` and every figure. Checked: the report exists, states the verdict
//! rules before the claim table, every figure is a decodable, non-blank PNG that the report links,
//! and every cell of the claim table holds a value (a number where a number belongs; no
//! placeholder such as TODO, NaN or a dash).

use std::path::{Path, PathBuf};

use bmt_trainer::report::{generate, ReportOptions};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bmt-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Decodes a PNG and returns (width, height, number of distinct RGBA pixels in a sample).
fn decode_png(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: undecodable PNG data: {e}", path.display()));
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for chunk in bytes.chunks(px).step_by(7) {
        colours.insert(chunk.to_vec());
        if colours.len() > 50 {
            break;
        }
    }
    (info.width, info.height, colours.len())
}

/// The cells of the Markdown table that follows the `## Claims` heading.
fn claim_table(report: &str) -> Vec<Vec<String>> {
    let section = report
        .split("\n## Claims\n")
        .nth(1)
        .expect("REPORT.md has a `## Claims` section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            // Split on unescaped `|` only.
            let mut cells = Vec::new();
            let mut cur = String::new();
            let mut prev = ' ';
            for ch in l.trim().trim_matches('|').chars() {
                if ch == '|' && prev != '\\' {
                    cells.push(cur.trim().to_string());
                    cur.clear();
                } else {
                    cur.push(ch);
                }
                prev = ch;
            }
            cells.push(cur.trim().to_string());
            cells
        })
        .collect()
}

#[test]
fn quick_report_writes_every_figure_and_a_full_claim_table() {
    let root = tmp("quick");
    let options = ReportOptions {
        out: root.join("report"),
        runs: root.join("runs"),
        quiet: true,
        ..ReportOptions::new(true)
    };
    let outcome = generate(&options).expect("the quick report runs");
    let report = std::fs::read_to_string(&outcome.report).expect("REPORT.md is written");
    assert_eq!(outcome.report, options.out.join("REPORT.md"));

    // The rules come before the numbers.
    let rules = report
        .find("## Verdict rules")
        .expect("a Verdict rules section");
    let table = report.find("## Claims").expect("a Claims section");
    assert!(
        rules < table,
        "the verdict rules must precede the claim table"
    );

    // Every figure: a real, non-blank PNG beside REPORT.md, linked from it.
    assert!(
        outcome.figures.len() >= 8,
        "{} figures",
        outcome.figures.len()
    );
    for f in &outcome.figures {
        assert_eq!(f.parent(), Some(options.out.as_path()));
        let (w, h, colours) = decode_png(f);
        assert!(w >= 600 && h >= 300, "{}: {w}×{h}", f.display());
        assert!(
            colours > 3,
            "{} looks blank ({colours} colours)",
            f.display()
        );
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            report.contains(&format!("]({name})")),
            "{name} is not linked from REPORT.md"
        );
    }

    // The claim table: one row per claim, each cell filled; value cells hold numbers.
    let rows = claim_table(&report);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "4b", "5", "5k", "6"]);
    assert_eq!(rows.len(), outcome.claims.len());
    let second_order_measured =
        std::fs::read_to_string(options.runs.join("adamw-seed0/metrics.jsonl"))
            .unwrap()
            .contains("\"second_order\"");
    for row in &rows {
        assert_eq!(row.len(), 8, "row {row:?}");
        for cell in row {
            assert!(!cell.is_empty(), "empty cell in {row:?}");
            for bad in ["TODO", "NaN", "nan", "inf", "—", "TBD", "??"] {
                assert!(!cell.contains(bad), "placeholder {bad:?} in {row:?}");
            }
        }
        let value = &row[3];
        let allowed_unmeasured = row[0] == "4b" && !second_order_measured;
        if !allowed_unmeasured {
            assert!(
                value.chars().any(|c| c.is_ascii_digit()) && !value.contains("not measured"),
                "claim {}: value cell {value:?} holds no measurement",
                row[0]
            );
        }
        assert!(
            ["**supported**", "**refuted**", "**inconclusive**"].contains(&row[5].as_str()),
            "claim {}: verdict {:?}",
            row[0],
            row[5]
        );
        assert!(row[7].contains(".png"), "claim {}: no figure", row[0]);
    }
    // One seed: every rule that needs the seed spread must refuse to decide.
    for id in ["3", "5", "5k"] {
        let row = rows.iter().find(|r| r[0] == id).unwrap();
        assert_eq!(
            row[5], "**inconclusive**",
            "claim {id} decided from one seed"
        );
    }

    // A second call reuses the finished runs: nothing is retrained, the report is rewritten.
    let before = std::fs::metadata(options.runs.join("adamw-seed0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let again = generate(&options).expect("the second report reuses the runs");
    let after = std::fs::metadata(options.runs.join("adamw-seed0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a finished run was retrained");
    assert_eq!(again.claims.len(), outcome.claims.len());
    let _ = std::fs::remove_dir_all(&root);
}
