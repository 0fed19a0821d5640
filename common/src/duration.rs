//! Durations written as a number of seconds, fractions allowed (`0.2`, `60`):
//! the one parser behind every option and configuration key that takes one,
//! each use stating its own bounds.

use std::time::Duration;

/// The longest duration any use accepts unless it says otherwise: about 31
/// years, far beyond any timeout, and well inside what `Instant` arithmetic
/// survives.
pub const MAX_SECONDS: Duration = Duration::from_secs(1_000_000_000);

/// The bounds one use accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds {
    /// Whether `0` is a value (it usually means "never" or "off").
    pub zero: bool,
    /// The longest value.
    pub max: Duration,
}

/// Why a number of seconds was refused; the text names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecondsError {
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    #[error("{value} must be {} seconds", if *zero { "0 or more" } else { "more than 0" })]
    OutOfRange { value: String, zero: bool },
    #[error("{value} seconds is over the limit of {} seconds", max.as_secs_f64())]
    TooLong { value: String, max: Duration },
}

impl Seconds {
    /// More than 0, at most [`MAX_SECONDS`].
    pub const POSITIVE: Seconds = Seconds {
        zero: false,
        max: MAX_SECONDS,
    };
    /// 0 or more, at most [`MAX_SECONDS`].
    pub const NON_NEGATIVE: Seconds = Seconds {
        zero: true,
        max: MAX_SECONDS,
    };

    /// These bounds with another maximum.
    pub const fn at_most(self, max: Duration) -> Seconds {
        Seconds { max, ..self }
    }

    /// Parses `s` (white space around it ignored) within these bounds.
    pub fn parse(self, s: &str) -> Result<Duration, SecondsError> {
        let v: f64 = s.trim().parse().map_err(|_| SecondsError::NotANumber(s.to_string()))?;
        if v.is_nan() || v < 0.0 || (v == 0.0 && !self.zero) {
            return Err(SecondsError::OutOfRange {
                value: s.to_string(),
                zero: self.zero,
            });
        }
        match Duration::try_from_secs_f64(v) {
            Ok(d) if d <= self.max => Ok(d),
            _ => Err(SecondsError::TooLong {
                value: s.to_string(),
                max: self.max,
            }),
        }
    }
}

/// A clap `value_parser` for a positive number of seconds.
pub fn positive(s: &str) -> Result<Duration, SecondsError> {
    Seconds::POSITIVE.parse(s)
}

/// A clap `value_parser` for 0 or more seconds.
pub fn non_negative(s: &str) -> Result<Duration, SecondsError> {
    Seconds::NON_NEGATIVE.parse(s)
}

/// A duration in seconds as the user wrote it: `0.2 s`, `60 s`.
pub fn show(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_refuses_zero_and_everything_not_a_finite_number() {
        assert_eq!(positive("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(positive(" 60 "), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "abc", "", "NaN", "inf", "1e300", "1e10"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(positive("0").unwrap_err().to_string(), "0 must be more than 0 seconds");
        assert_eq!(
            positive("x").unwrap_err().to_string(),
            "\"x\" is not a number of seconds"
        );
    }

    #[test]
    fn non_negative_takes_zero_and_bounds_are_explicit() {
        assert_eq!(non_negative("0"), Ok(Duration::ZERO));
        assert_eq!(
            non_negative("-0.5").unwrap_err().to_string(),
            "-0.5 must be 0 or more seconds"
        );
        let short = Seconds::POSITIVE.at_most(Duration::from_secs(5));
        assert_eq!(short.parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(
            short.parse("5.5").unwrap_err().to_string(),
            "5.5 seconds is over the limit of 5 seconds"
        );
        assert_eq!(non_negative("1e9"), Ok(MAX_SECONDS));
    }

    #[test]
    fn shown_as_written() {
        assert_eq!(show(Duration::from_millis(200)), "0.2 s");
        assert_eq!(show(Duration::from_secs(60)), "60 s");
    }
}
