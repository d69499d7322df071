//! Opens a page in headless Chromium and checks that it renders: no console
//! errors, the expected text and charts in the DOM, and a screenshot of the
//! right size that is not blank and shows coloured bars.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 2000;

/// Chromium is installed (by `cargo xtask setup`)?
pub fn chromium_available() -> bool {
    Path::new(CHROMIUM).exists()
}

/// Runs `command` for at most `limit`, killing it when it overruns.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
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

pub fn chromium(profile: &Path, extra: &[String], page: &Path) -> Output {
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
pub fn console_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
        .map(str::to_owned)
        .collect()
}

/// Loads `page` twice (DOM dump, screenshot) and asserts it renders;
/// `texts` must all appear in the DOM, with `svgs` inline charts.
pub fn assert_page_renders(page: &Path, texts: &[&str], svgs: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1. The DOM: Chromium parses the page and the tables are there.
    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(profile.path(), &["--dump-dom".to_owned()], page);
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
    for text in texts {
        assert!(dom_text.contains(text), "{text:?} missing from the DOM");
    }
    assert_eq!(dom_text.matches("<svg").count(), svgs, "inline charts");
    let errors = console_errors(&dom_log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // 2. The screenshot: right size, not blank, several bar colours.
    let profile = tempfile::tempdir().expect("profile");
    let png_path = dir.path().join("shot.png");
    let shot = chromium(
        profile.path(),
        &[format!("--screenshot={}", png_path.display())],
        page,
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
    // Bars are solid fills, one colour per compared column (at least two
    // columns): each colour covers many pixels.
    let bar_colours = colour_counts.values().filter(|&&count| count > 500).count();
    assert!(
        bar_colours >= 2,
        "expected several bar colours, found {bar_colours}: {colour_counts:?}"
    );
}
