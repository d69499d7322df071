//! Renders a `hoptrace compare` HTML page from two synthetic reports, opens it
//! in headless Chromium and checks that it renders: no console errors, a
//! screenshot of the right size that is not blank and shows coloured bars.
//! Skips with a printed reason when Chromium is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 2000;

fn synthetic_report(datapath: &str, scale: f64) -> Value {
    let category = |name: &str, p50: f64| {
        json!({"category": name, "direction": "all", "conn_state": "all", "count": 5000,
               "p50_us": p50 * scale, "p90_us": p50 * scale * 1.5, "p99_us": p50 * scale * 3.0,
               "max_us": p50 * scale * 10.0, "mean_us": p50 * scale * 1.2, "share": 0.2})
    };
    let segment = |name: &str, category: &str, p50: f64| {
        json!({"segment": name, "category": category, "direction": "request", "conn_state": "established",
               "count": 5000, "p50_us": p50 * scale, "p99_us": p50 * scale * 3.0})
    };
    let histogram: Vec<Value> = (1..=40)
        .map(|i| {
            let value = (50.0 * scale * (1.0 + f64::from(i) * 0.15)).round();
            let percentile =
                100.0 * (1.0 - (-f64::from(i) / 6.0).exp()) / (1.0 - (-40.0f64 / 6.0).exp());
            json!([value, percentile, 25])
        })
        .collect();
    json!({
        "schema": "hoptrace.report.v1",
        "node": "lab-node-1",
        "kernel": "6.18.0",
        "started_at": "2025-01-01T12:00:00Z",
        "duration_s": 30.0,
        "segments": [
            segment("pod0-veth→cni0", "veth", 6.0),
            segment("cni0→conntrack", "bridge", 4.0),
            segment("conntrack", "conntrack", 3.0),
            segment("dnat", "nat", 9.0),
            segment("vxlan encap", "overlay", 12.0),
        ],
        "categories": [
            category("veth", 6.0),
            category("bridge", 4.0),
            category("conntrack", 3.0),
            category("nat", 9.0),
            category("overlay", 12.0),
            category("socket", 20.0),
        ],
        "end_to_end": [
            {"direction": "all", "conn_state": "all", "count": 5000, "p50_us": 60.0 * scale,
             "p90_us": 90.0 * scale, "p99_us": 200.0 * scale, "max_us": 800.0 * scale, "mean_us": 70.0 * scale}
        ],
        "lab": {
            "datapath": datapath, "kube_proxy": "iptables", "services": 1000, "ingress": "none",
            "load": {"mode": "http-keep-alive", "rate": 2000, "connections": 8},
            "client_latency": {"p50_us": 120.0 * scale, "p90_us": 180.0 * scale, "p99_us": 400.0 * scale,
                               "max_us": 1500.0 * scale, "histogram": histogram}
        }
    })
}

/// Runs `command` for at most `limit`, killing it when it overruns.
fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_thread.join().expect("stdout thread"),
        stderr: err_thread.join().expect("stderr thread"),
    }
}

fn chromium(profile: &Path, extra: &[String], page: &Path) -> Output {
    let mut command = Command::new(CHROMIUM);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.arg(format!("--window-size={WIDTH},{HEIGHT}"));
    command.args(extra);
    command.arg(format!("file://{}", page.display()));
    run_bounded(command, Duration::from_secs(90))
}

/// Console messages Chromium logged for the page. Chromium logs every one
/// (`console.error` and uncaught exceptions too) as `...:CONSOLE:<line>] "..."`
/// at INFO level; the page has no scripts, so any console message is an error.
fn console_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn compare_page_renders_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipping: {CHROMIUM} not installed (apt-get install -y chromium)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs: Vec<PathBuf> = [
        ("iptables.json", synthetic_report("iptables", 1.0)),
        ("cilium.json", synthetic_report("cilium", 0.7)),
    ]
    .into_iter()
    .map(|(name, report)| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json")).expect("write");
        path
    })
    .collect();
    let comparison = hoptrace::compare::compare(&inputs).expect("compare");
    let page = dir.path().join("compare.html");
    let written = hoptrace::compare::write_html(&comparison, &page).expect("write html");
    assert_eq!(written.len(), 3, "page plus two SVG charts: {written:?}");
    if let Ok(keep) = std::env::var("HOPTRACE_KEEP_HTML") {
        for file in &written {
            let _ = std::fs::copy(file, Path::new(&keep).join(file.file_name().expect("name")));
        }
    }

    // 1. The DOM: Chromium parses the page and the tables are there.
    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(profile.path(), &["--dump-dom".to_owned()], &page);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let dom_log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {dom_log}"
    );
    assert!(
        dom_text.contains("<table"),
        "no table in the DOM:\n{dom_text}"
    );
    assert!(dom_text.contains("cilium") && dom_text.contains("iptables"));
    assert_eq!(dom_text.matches("<svg").count(), 2, "two inline charts");
    let errors = console_errors(&dom_log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // 2. The screenshot: right size, not blank, several bar colours.
    let profile = tempfile::tempdir().expect("profile");
    let png_path = dir.path().join("shot.png");
    let shot = chromium(
        profile.path(),
        &[format!("--screenshot={}", png_path.display())],
        &page,
    );
    let shot_log = String::from_utf8_lossy(&shot.stderr);
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {shot_log}"
    );
    let errors = console_errors(&shot_log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert!(png_path.exists(), "no screenshot written: {shot_log}");
    if let Ok(keep) = std::env::var("HOPTRACE_KEEP_HTML") {
        let _ = std::fs::copy(&png_path, Path::new(&keep).join("shot.png"));
    }

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0u8; reader.output_buffer_size().expect("buffer size")];
    let frame = reader.next_frame(&mut pixels).expect("png frame");
    assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
    let channels = frame.color_type.samples();
    assert!(
        channels >= 3,
        "unexpected colour type {:?}",
        frame.color_type
    );
    assert_eq!(frame.bit_depth, png::BitDepth::Eight);
    let mut non_white = 0usize;
    let mut colour_counts = std::collections::HashMap::<[u8; 3], usize>::new();
    for pixel in pixels[..frame.buffer_size()].chunks_exact(channels) {
        let rgb = [pixel[0], pixel[1], pixel[2]];
        if rgb.iter().any(|&c| c < 235) {
            non_white += 1;
        }
        // Saturated colours only: text and grid lines are grey.
        let max = *rgb.iter().max().expect("3");
        let min = *rgb.iter().min().expect("3");
        if max - min > 60 {
            *colour_counts.entry(rgb).or_default() += 1;
        }
    }
    let total = (WIDTH * HEIGHT) as usize;
    let fraction = non_white as f64 / total as f64;
    assert!(
        fraction > 0.03,
        "page looks blank: {:.2}% non-white pixels",
        fraction * 100.0
    );
    // Bars are solid fills: each category colour covers many pixels.
    let bar_colours = colour_counts.values().filter(|&&count| count > 500).count();
    assert!(
        bar_colours >= 4,
        "expected several bar colours, found {bar_colours}: {colour_counts:?}"
    );
}
