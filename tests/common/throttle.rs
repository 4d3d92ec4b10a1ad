//! A throttling TCP proxy in front of a test registry: downloads last long
//! enough for progress frames (and cancellations) to be seen.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Forwards 127.0.0.1:PORT to the registry, at most `rate` bytes a second per
/// connection from the registry, counting them.
pub struct Throttle {
    pub addr: String,
    bytes: Arc<AtomicU64>,
    pub rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    pub fn start(upstream: &str, rate: u64) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s, up) = (
            Arc::clone(&bytes),
            Arc::clone(&rate),
            Arc::clone(&stop),
            upstream.to_string(),
        );
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let Ok(upc) = TcpStream::connect(&up) else {
                            continue;
                        };
                        let (mut d1, mut u1) =
                            (down.try_clone().unwrap(), upc.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut d1, &mut u1);
                            let _ = u1.shutdown(std::net::Shutdown::Write);
                        });
                        let (b, r, mut down, mut upc) = (Arc::clone(&b), Arc::clone(&r), down, upc);
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 16 << 10];
                            let start = Instant::now();
                            let mut sent = 0u64;
                            loop {
                                let n = match upc.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if down.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                sent += n as u64;
                                b.fetch_add(n as u64, Ordering::Relaxed);
                                let rate = r.load(Ordering::Relaxed).max(1);
                                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                                if let Some(wait) = due.checked_sub(start.elapsed()) {
                                    std::thread::sleep(wait);
                                }
                            }
                            let _ = down.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Throttle {
            addr,
            bytes,
            rate,
            stop,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Wait until more than `n` bytes went through.
    pub fn wait_bytes(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.bytes() <= n {
            assert!(Instant::now() < deadline, "no bytes through the proxy");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rate.store(u64::MAX / 2, Ordering::Relaxed);
    }
}
