//! Render + encode time per page, on one thread.
//!
//! `cargo run --release -p pinpost-fax --example bench_page [-- RUNS]` prints the median,
//! 90th percentile and minimum of RUNS (default 200) runs for each resolution: rendering
//! the PIN notice with ab_glyph, MH encoding it (LSB first, as the modem takes it), and
//! DLE stuffing. The target is under 20 ms per page on one core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pinpost_fax::mh;
use pinpost_fax::page::{Resolution, render_page};

const NOTICE: &str = "Your PIN 7305917735186203\n\
Amount: JPY 12,800\n\
Payee: Example Books Ltd., 1-2-3 Example-cho, Chiyoda-ku, Tokyo\n\
Expires: 2026-12-31 23:59 JST\n\
\n\
Issuer: Trusted Third Party Co.\n\
Use this PIN once, at the shop named above, before it expires.";

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    (median, p90, samples[0])
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
        .max(1);
    for res in [Resolution::Fine, Resolution::Standard] {
        // Warm up (font parsing happens once per process).
        let page = render_page(NOTICE, res).expect("render");
        let bytes = mh::encode_for_modem(&page).len();

        let mut render = Vec::with_capacity(runs);
        let mut encode = Vec::with_capacity(runs);
        let mut total = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t0 = Instant::now();
            let page = render_page(black_box(NOTICE), res).expect("render");
            let t1 = Instant::now();
            let data = mh::encode_for_modem(&page);
            let stuffed = pinpost_modem::dle::stuff(&data);
            black_box(&stuffed);
            let t2 = Instant::now();
            render.push(t1 - t0);
            encode.push(t2 - t1);
            total.push(t2 - t0);
        }
        let (rm, rp, rmin) = stats(render);
        let (em, ep, emin) = stats(encode);
        let (tm, tp, tmin) = stats(total);
        println!(
            "{res:?} ({} rows, {bytes} bytes MH), {runs} runs:\n  \
             render          median {rm:>10.3?}  p90 {rp:>10.3?}  min {rmin:>10.3?}\n  \
             encode + stuff  median {em:>10.3?}  p90 {ep:>10.3?}  min {emin:>10.3?}\n  \
             per page        median {tm:>10.3?}  p90 {tp:>10.3?}  min {tmin:>10.3?}",
            page.height()
        );
    }
}
