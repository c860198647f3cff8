//! From a delivery address to what follows `ATDT`.
//!
//! Addresses are E.164 (`+81312345678`, what the daemon's registry stores) or a local dial
//! string (`0312345678`, `123#`). Spaces, dashes, dots and parentheses are ignored.
//!
//! - E.164 in the configured country (`country_code = "81"`): the country code is replaced
//!   by the national (trunk) prefix: `+81 3 1234 5678` → `0312345678`.
//! - E.164 elsewhere: the international prefix replaces `+`: `+44 20 7946 0000` →
//!   `010442079460000` with `international_prefix = "010"` (Japan; `00` in most of the world,
//!   `011` in the NANP).
//! - A local dial string (digits, `*`, `#`) is dialled as it is.
//!
//! Then `prefix` (an outside-line code such as `9,` or `0W`) goes in front. Anything else in
//! the address is refused before a modem is touched, so an address can never inject AT
//! commands.

/// How addresses are turned into dial strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPlan {
    /// Dialled before every number (outside line, carrier selection): digits, `*`, `#` and
    /// the modifiers `,` (pause), `W` (wait for dial tone), `@`, `!`.
    pub prefix: String,
    /// The country this gateway dials from, without `+` (`"81"`); `None` dials every E.164
    /// number internationally.
    pub country_code: Option<String>,
    /// Replaces the country code for national numbers (`"0"`; `""` where numbers keep their
    /// leading digit, as in Italy).
    pub national_prefix: String,
    /// Replaces `+` for other countries (`"010"`, `"00"`, `"011"`).
    pub international_prefix: String,
    /// `ATDT` (tone) or `ATDP` (pulse).
    pub tone: bool,
}

impl Default for DialPlan {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            country_code: None,
            national_prefix: "0".into(),
            international_prefix: "00".into(),
            tone: true,
        }
    }
}

/// Why an address cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialPlanError {
    #[error("not a dialable fax number")]
    InvalidAddress,
    #[error("invalid dial plan: {0}")]
    InvalidPlan(&'static str),
}

fn is_prefix_char(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | ',' | 'W' | 'w' | '@' | '!')
}

impl DialPlan {
    /// Check the plan itself.
    pub fn validate(&self) -> Result<(), DialPlanError> {
        if self.prefix.len() > 16 || !self.prefix.chars().all(is_prefix_char) {
            return Err(DialPlanError::InvalidPlan(
                "prefix: at most 16 of 0-9 * # , W @ !",
            ));
        }
        if let Some(cc) = &self.country_code
            && (cc.is_empty() || cc.len() > 3 || !cc.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(DialPlanError::InvalidPlan("country_code: 1 to 3 digits"));
        }
        if self.national_prefix.len() > 4
            || !self.national_prefix.chars().all(|c| c.is_ascii_digit())
        {
            return Err(DialPlanError::InvalidPlan(
                "national_prefix: up to 4 digits",
            ));
        }
        if self.international_prefix.is_empty()
            || self.international_prefix.len() > 5
            || !self
                .international_prefix
                .chars()
                .all(|c| c.is_ascii_digit())
        {
            return Err(DialPlanError::InvalidPlan(
                "international_prefix: 1 to 5 digits",
            ));
        }
        Ok(())
    }

    /// The dial string for `address` (without `ATDT`).
    pub fn dial_string(&self, address: &str) -> Result<String, DialPlanError> {
        let compact: String = address
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let number = if let Some(e164) = compact.strip_prefix('+') {
            if !(4..=15).contains(&e164.len()) || !e164.chars().all(|c| c.is_ascii_digit()) {
                return Err(DialPlanError::InvalidAddress);
            }
            match &self.country_code {
                Some(cc) if e164.starts_with(cc.as_str()) && e164.len() > cc.len() => {
                    format!("{}{}", self.national_prefix, &e164[cc.len()..])
                }
                _ => format!("{}{e164}", self.international_prefix),
            }
        } else {
            if compact.is_empty()
                || compact.len() > 32
                || !compact
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
            {
                return Err(DialPlanError::InvalidAddress);
            }
            compact
        };
        Ok(format!("{}{number}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn japan() -> DialPlan {
        DialPlan {
            prefix: String::new(),
            country_code: Some("81".into()),
            national_prefix: "0".into(),
            international_prefix: "010".into(),
            tone: true,
        }
    }

    #[test]
    fn national_and_international() {
        let p = japan();
        assert_eq!(p.dial_string("+81312345678").unwrap(), "0312345678");
        assert_eq!(p.dial_string("+81 3-1234-5678").unwrap(), "0312345678");
        assert_eq!(p.dial_string("+442079460000").unwrap(), "010442079460000");
        assert_eq!(p.dial_string("03 (1234) 5678").unwrap(), "0312345678");
        assert_eq!(p.dial_string("*67#").unwrap(), "*67#");
        let outside = DialPlan {
            prefix: "9,".into(),
            ..japan()
        };
        assert_eq!(outside.dial_string("+81312345678").unwrap(), "9,0312345678");
        let nowhere = DialPlan::default();
        assert_eq!(
            nowhere.dial_string("+81312345678").unwrap(),
            "0081312345678"
        );
        let italy = DialPlan {
            country_code: Some("39".into()),
            national_prefix: String::new(),
            ..DialPlan::default()
        };
        assert_eq!(italy.dial_string("+390612345678").unwrap(), "0612345678");
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        let p = japan();
        for bad in [
            "",
            "+",
            "+81",
            "+81a3",
            "031234;ATH",
            "0312\r",
            "+1234567890123456",
            "W123",
        ] {
            assert_eq!(
                p.dial_string(bad),
                Err(DialPlanError::InvalidAddress),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn validates_the_plan() {
        assert!(japan().validate().is_ok());
        let bad = DialPlan {
            prefix: "9;".into(),
            ..japan()
        };
        assert!(bad.validate().is_err());
        let bad = DialPlan {
            country_code: Some("+81".into()),
            ..japan()
        };
        assert!(bad.validate().is_err());
        let bad = DialPlan {
            international_prefix: String::new(),
            ..japan()
        };
        assert!(bad.validate().is_err());
    }
}
