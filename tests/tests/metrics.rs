//! `pager serve --metrics-listen`: `/metrics` scraped with a real HTTP client; the counters and
//! histograms move with the work done (faults by kind, commits and their sizes).

use std::collections::HashMap;

use clu_tests::harness::{id_of, Pager, Tool};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").to_string()
}

/// Every sample of the exposition: `name{labels}` to value.
fn scrape(addr: &str) -> HashMap<String, f64> {
    let resp = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.content_type().contains("openmetrics"),
        "{}",
        resp.content_type()
    );
    let text = resp.into_string().expect("a text body");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_are_served_over_http_and_move_with_the_work_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let pager = Pager::start_with(&dir.path().join("root"), 4096, &["--metrics-listen", &addr]);
    let before = scrape(&addr);
    assert_eq!(get(&before, "clu_commits_total"), 0.0);
    assert_eq!(
        get(&before, "clu_fault_latency_seconds_count{kind=\"zero\"}"),
        0.0
    );

    let mut t = Tool::start(&pager);
    let id = id_of(&t.ok("create 64 protected 1"));
    t.ok(&format!("fill {id} 7"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("fill {id} 8 0 4"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("unmap {id}"));
    let after = scrape(&addr);
    assert_eq!(get(&after, "clu_commits_total"), 2.0);
    assert_eq!(get(&after, "clu_committed_pages_total"), 68.0);
    // The commit sizes: one of 64 pages, one of 4.
    assert_eq!(get(&after, "clu_commit_pages_count"), 2.0);
    assert_eq!(get(&after, "clu_commit_pages_bucket{le=\"4.0\"}"), 1.0);
    assert_eq!(get(&after, "clu_commit_pages_bucket{le=\"64.0\"}"), 2.0);
    assert_eq!(get(&after, "clu_commit_latency_seconds_count"), 2.0);
    assert!(get(&after, "clu_commit_latency_seconds_sum") > 0.0);
    // 64 new pages written: zero-fill faults, each timed.
    let zero = get(&after, "clu_fault_latency_seconds_count{kind=\"zero\"}");
    assert!(zero >= 1.0, "{zero}");
    assert!(
        get(
            &after,
            "clu_fault_latency_seconds_bucket{le=\"+Inf\",kind=\"zero\"}"
        ) == zero
    );
    assert!(get(&after, "clu_faults_total{kind=\"missing\"}") >= 1.0);
    assert!(get(&after, "clu_pages_supplied_total{source=\"zero\"}") >= 64.0);
    // The image is cached after its last unmap.
    assert_eq!(get(&after, "clu_cached_images"), 1.0);
    assert_eq!(get(&after, "clu_mapped_images"), 0.0);
    assert_eq!(get(&after, "clu_cached_pages"), 64.0);

    // Mapped again: its pages are resident (mapped ahead from the cache, or on minor faults).
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 8 0 4"));
    let again = scrape(&addr);
    // Every fault timed was one the pager read, and each histogram's count is its +Inf bucket.
    let kinds = [
        "zero",
        "storage",
        "paging",
        "minor",
        "write_protect",
        "remote",
    ];
    let mut timed = 0.0;
    for k in kinds {
        let count = get(
            &again,
            &format!("clu_fault_latency_seconds_count{{kind=\"{k}\"}}"),
        );
        let inf = get(
            &again,
            &format!("clu_fault_latency_seconds_bucket{{le=\"+Inf\",kind=\"{k}\"}}"),
        );
        assert_eq!(count, inf, "{k}");
        timed += count;
    }
    let read: f64 = ["missing", "minor", "write_protect"]
        .iter()
        .map(|k| get(&again, &format!("clu_faults_total{{kind=\"{k}\"}}")))
        .sum();
    assert!(timed >= 1.0 && timed <= read, "timed {timed}, read {read}");
    assert_eq!(get(&again, "clu_mapped_images"), 1.0);
    assert_eq!(get(&again, "clu_connections"), 1.0);

    // Anything else is a 404 that says where the metrics are.
    let err = ureq::get(&format!("http://{addr}/other"))
        .call()
        .unwrap_err();
    match err {
        ureq::Error::Status(404, r) => {
            assert!(r.into_string().unwrap().contains("/metrics"))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(clu_tests::harness::pager_bin())
        .arg("--socket")
        .arg(dir.path().join("s"))
        .args(["serve", "--root"])
        .arg(dir.path().join("root"))
        .args(["--metrics-listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve metrics on"), "{err}");
}

#[test]
fn a_backup_server_serves_its_metrics_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, metrics) = (free_addr(), free_addr());
    let site = "backup-metrics";
    let mut backup = std::process::Command::new(clu_tests::harness::pager_bin())
        .args(["backup-server", "--root"])
        .arg(dir.path().join("backup"))
        .args(["--listen", &addr, "--metrics-listen", &metrics, "--keys"])
        .arg(clu_tests::harness::cell_keys(site))
        .args(["--site", site])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start a backup server");
    clu_tests::harness::wait_listening(&addr);
    clu_tests::harness::wait_listening(&metrics);
    let before = scrape(&metrics);
    assert_eq!(get(&before, "clu_backup_server_operations_total"), 0.0);
    let pager = Pager::start(&dir.path().join("root"), 4096);
    pager.admin(&["vol", "create", "rel", "--backup", &addr, "--sync", "1"]);
    let mut t = Tool::start(&pager);
    let id = id_of(&t.ok("create 8 protected 2"));
    t.ok(&format!("fill {id} 3"));
    t.ok(&format!("commit {id}"));
    let after = scrape(&metrics);
    assert!(get(&after, "clu_backup_server_operations_total") >= 1.0);
    assert!(get(&after, "clu_backup_server_page_bytes_total") >= 8.0 * 4096.0);
    assert_eq!(get(&after, "clu_backup_server_images"), 1.0);
    assert_eq!(get(&after, "clu_backup_server_sessions"), 1.0);
    assert_eq!(get(&after, "clu_backup_server_refused_total"), 0.0);
    let _ = backup.kill();
    let _ = backup.wait();
}
