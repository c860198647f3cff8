//! What a submit_sm_resp command_status means for the queue.

/// The class of one command_status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Accepted,
    /// Slow the whole bind down and retry the same PDU.
    Throttled,
    /// Retry later (counts as an attempt).
    Transient,
    /// Never retry this device.
    Permanent,
}

/// Classify a command_status.
///
/// Statuses that say the message or its addressing is wrong are permanent. Statuses that
/// describe the SMSC's own state are transient, and so is every code this table does not
/// know (vendor codes 0x400–0x4FF, reserved codes): a code we do not understand must not fail
/// a device for good.
pub(crate) fn classify(status: u32) -> StatusClass {
    match status {
        0x0000_0000 => StatusClass::Accepted,
        0x0000_0058 | 0x0000_0014 => StatusClass::Throttled,
        0x0000_0001 // ESME_RINVMSGLEN
        | 0x0000_0002 // ESME_RINVCMDLEN
        | 0x0000_0003 // ESME_RINVCMDID
        | 0x0000_0006 // ESME_RINVPRTFLG
        | 0x0000_0007 // ESME_RINVREGDLVFLG
        | 0x0000_000A // ESME_RINVSRCADR
        | 0x0000_000B // ESME_RINVDSTADR
        | 0x0000_000C // ESME_RINVMSGID
        | 0x0000_0015 // ESME_RINVSERTYP
        | 0x0000_0033 // ESME_RINVNUMDESTS
        | 0x0000_0034 // ESME_RINVDLNAME
        | 0x0000_0040 // ESME_RINVDESTFLAG
        | 0x0000_0042 // ESME_RINVSUBREP
        | 0x0000_0043 // ESME_RINVESMCLASS
        | 0x0000_0044 // ESME_RCNTSUBDL
        | 0x0000_0048 // ESME_RINVSRCTON
        | 0x0000_0049 // ESME_RINVSRCNPI
        | 0x0000_0050 // ESME_RINVDSTTON
        | 0x0000_0051 // ESME_RINVDSTNPI
        | 0x0000_0053 // ESME_RINVSYSTYP
        | 0x0000_0054 // ESME_RINVREPFLAG
        | 0x0000_0055 // ESME_RINVNUMMSGS
        | 0x0000_0061 // ESME_RINVSCHED
        | 0x0000_0062 // ESME_RINVEXPIRY
        | 0x0000_0063 // ESME_RINVDFTMSGID
        | 0x0000_0065 // ESME_RX_P_APPN
        | 0x0000_0066 // ESME_RX_R_APPN
        | 0x0000_00C0..=0x0000_00C4 // TLV errors
        | 0x0000_0100..=0x0000_0112 // service type / DCS / broadcast errors
        => StatusClass::Permanent,
        // ESME_RSYSERR 0x08, ESME_RSUBMITFAIL 0x45, ESME_RX_T_APPN 0x64,
        // ESME_RDELIVERYFAILURE 0xFE, ESME_RUNKNOWNERR 0xFF, ESME_RINVBNDSTS 0x04, vendor
        // codes and everything else.
        _ => StatusClass::Transient,
    }
}

/// The status as the queue stores it: `0x0000000b`.
pub(crate) fn code(status: u32) -> String {
    format!("{status:#010x}")
}

/// The spec name of a status, for reasons and logs.
pub(crate) fn name(status: u32) -> &'static str {
    match status {
        0x00 => "ESME_ROK",
        0x01 => "ESME_RINVMSGLEN",
        0x02 => "ESME_RINVCMDLEN",
        0x03 => "ESME_RINVCMDID",
        0x04 => "ESME_RINVBNDSTS",
        0x05 => "ESME_RALYBND",
        0x06 => "ESME_RINVPRTFLG",
        0x07 => "ESME_RINVREGDLVFLG",
        0x08 => "ESME_RSYSERR",
        0x0A => "ESME_RINVSRCADR",
        0x0B => "ESME_RINVDSTADR",
        0x0C => "ESME_RINVMSGID",
        0x0D => "ESME_RBINDFAIL",
        0x0E => "ESME_RINVPASWD",
        0x0F => "ESME_RINVSYSID",
        0x14 => "ESME_RMSGQFUL",
        0x15 => "ESME_RINVSERTYP",
        0x33 => "ESME_RINVNUMDESTS",
        0x43 => "ESME_RINVESMCLASS",
        0x45 => "ESME_RSUBMITFAIL",
        0x48 => "ESME_RINVSRCTON",
        0x49 => "ESME_RINVSRCNPI",
        0x50 => "ESME_RINVDSTTON",
        0x51 => "ESME_RINVDSTNPI",
        0x58 => "ESME_RTHROTTLED",
        0x61 => "ESME_RINVSCHED",
        0x62 => "ESME_RINVEXPIRY",
        0x64 => "ESME_RX_T_APPN",
        0x65 => "ESME_RX_P_APPN",
        0x66 => "ESME_RX_R_APPN",
        0xC0..=0xC4 => "ESME_RINVTLV",
        0xFE => "ESME_RDELIVERYFAILURE",
        0xFF => "ESME_RUNKNOWNERR",
        0x104 => "ESME_RINVDCS",
        0x400..=0x4FF => "vendor-specific",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let table: &[(u32, StatusClass)] = &[
            (0x00, StatusClass::Accepted),
            (0x58, StatusClass::Throttled),
            (0x14, StatusClass::Throttled),
            (0x08, StatusClass::Transient),
            (0x45, StatusClass::Transient),
            (0x64, StatusClass::Transient),
            (0xFE, StatusClass::Transient),
            (0xFF, StatusClass::Transient),
            (0x04, StatusClass::Transient),
            (0x400, StatusClass::Transient),
            (0x4FF, StatusClass::Transient),
            (0x1234, StatusClass::Transient),
            (0x0B, StatusClass::Permanent),
            (0x0A, StatusClass::Permanent),
            (0x01, StatusClass::Permanent),
            (0x43, StatusClass::Permanent),
            (0x65, StatusClass::Permanent),
            (0x104, StatusClass::Permanent),
            (0x33, StatusClass::Permanent),
            (0x51, StatusClass::Permanent),
            (0xC4, StatusClass::Permanent),
        ];
        for &(status, class) in table {
            assert_eq!(classify(status), class, "status {}", code(status));
        }
    }

    #[test]
    fn codes_are_zero_padded_lower_hex() {
        assert_eq!(code(0x0B), "0x0000000b");
        assert_eq!(code(0x104), "0x00000104");
        assert_eq!(code(0), "0x00000000");
        assert_eq!(name(0x0B), "ESME_RINVDSTADR");
        assert_eq!(name(0x58), "ESME_RTHROTTLED");
        assert_eq!(name(0x433), "vendor-specific");
    }
}
