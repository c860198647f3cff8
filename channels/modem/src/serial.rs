//! Opening a real serial port (the only place this crate touches a device).

use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use crate::engine::{Modem, ModemError, ModemOptions};

/// Flow control on the DTE–DCE link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowControl {
    None,
    /// XON/XOFF, handled by the tty driver.
    Software,
    /// RTS/CTS.
    #[default]
    Hardware,
}

/// How to set up the port: 8 data bits, no parity, one stop bit, and these.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    pub baud_rate: u32,
    pub flow_control: FlowControl,
}

impl Default for SerialSettings {
    fn default() -> Self {
        Self {
            baud_rate: 115_200,
            flow_control: FlowControl::Hardware,
        }
    }
}

/// A modem on a serial port.
pub type SerialModem = Modem<SerialStream>;

impl Modem<SerialStream> {
    /// Open `path` (`/dev/ttyS0`, `/dev/ttyUSB0`, a pty slave) in raw mode, exclusively.
    /// Must be called inside a tokio runtime.
    pub fn open_serial(path: &str, settings: &SerialSettings) -> Result<Self, ModemError> {
        Self::open_serial_with(path, settings, ModemOptions::default())
    }

    /// [`open_serial`](Self::open_serial) with engine options.
    pub fn open_serial_with(
        path: &str,
        settings: &SerialSettings,
        opts: ModemOptions,
    ) -> Result<Self, ModemError> {
        let flow = match settings.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        };
        let stream = tokio_serial::new(path, settings.baud_rate)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(flow)
            .open_native_async()
            .map_err(|e| ModemError::Open {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Modem::with_options(stream, opts))
    }
}
