//! `Modem::open_serial` on a real tty: the slave side of a pty, opened by tokio-serial,
//! with a responder on the master side.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Duration;

use pinpost_modem::{FinalResult, Modem, SerialSettings};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

#[tokio::test]
async fn commands_over_a_pty_with_tokio_serial() {
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let path = ptsname(&master, Vec::new())
        .expect("ptsname")
        .into_string()
        .expect("utf-8 pty path");
    let mut master = File::from(master);

    let mut modem = Modem::open_serial(&path, &SerialSettings::default()).expect("open slave");

    // A blocking responder: answers each command line, with the echo on.
    let responder = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut line = Vec::new();
        let mut answered = 0;
        // Until the slave side is closed (EIO on the master).
        loop {
            let n = match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\r' {
                    let cmd = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    let mut answer = format!("{cmd}\r");
                    if cmd == "AT+FCLASS=2.0" {
                        answer.push_str("\r\nOK\r\n");
                    } else {
                        answer.push_str("\r\n+FHS:23\r\n\r\nOK\r\n");
                    }
                    master.write_all(answer.as_bytes()).unwrap();
                    answered += 1;
                } else {
                    line.push(b);
                }
            }
        }
        answered
    });

    let r = modem.command("AT+FCLASS=2.0").await.expect("answer");
    assert_eq!(r.result, FinalResult::Ok);
    assert!(r.lines.is_empty());
    let r = tokio::time::timeout(Duration::from_secs(5), modem.command("AT+FDT"))
        .await
        .expect("bounded")
        .expect("answer");
    assert_eq!(r.value("+FHS:"), Some("23"));
    drop(modem);
    assert_eq!(responder.join().unwrap(), 2);
}
