//! Opening a TAP serial line: 7 data bits, even parity, one stop bit, XON/XOFF.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

/// Open `device` at `baud` baud, 7E1 with XON/XOFF, for exclusive use.
///
/// The parity bit is the UART's business: what reads back is 7-bit data.
pub fn open_serial(device: &Path, baud: u32) -> io::Result<SerialStream> {
    let path = device.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "serial device path is not UTF-8",
        )
    })?;
    let mut port = tokio_serial::new(path, baud)
        .data_bits(DataBits::Seven)
        .parity(Parity::Even)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::Software)
        .timeout(Duration::from_secs(1))
        .open_native_async()
        .map_err(|e| io::Error::other(format!("{}: {e}", device.display())))?;
    port.set_exclusive(true)
        .map_err(|e| io::Error::other(format!("{}: {e}", device.display())))?;
    Ok(port)
}

/// Open the modem on `device` (7E1, XON/XOFF), send `init` (each must answer OK), dial
/// `number` and return the line once the modem answers CONNECT. BUSY, NO CARRIER, NO ANSWER
/// and the like come back as errors naming the result; the channel retries with backoff.
pub async fn dial_up(
    device: &Path,
    baud: u32,
    init: &[String],
    number: &str,
    timeout: Duration,
) -> io::Result<SerialStream> {
    let port = open_serial(device, baud)?;
    let mut modem = pinpost_modem::Modem::new(port);
    let fail = |what: &str, e: pinpost_modem::ModemError| {
        io::Error::other(format!("{}: {what}: {e}", device.display()))
    };
    for cmd in init {
        modem.expect_ok(cmd).await.map_err(|e| fail(cmd, e))?;
    }
    let answer = modem
        .dial(number, pinpost_modem::DialMode::Tone, timeout)
        .await
        .map_err(|e| fail("dial", e))?;
    match answer.result {
        pinpost_modem::FinalResult::Connect(_) => Ok(modem.into_inner()),
        other => Err(io::Error::other(format!(
            "{}: dial: {other:?}",
            device.display()
        ))),
    }
}
