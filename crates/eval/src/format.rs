//! Number formatting for tables.

/// Formats `x` with `digits` significant digits: scientific when `|x| < 1e-3` or `|x| ≥ 1e5`,
/// plain otherwise; `NaN` and infinities as `NaN`, `inf`, `-inf`.
pub fn fmt_sig(x: f64, digits: usize) -> String {
    let digits = digits.max(1);
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let ax = x.abs();
    if !(1e-3..1e5).contains(&ax) {
        return format!("{:.*e}", digits - 1, x);
    }
    let magnitude = ax.log10().floor() as i32;
    let decimals = (digits as i32 - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::fmt_sig;

    #[test]
    fn significant_digits_and_scientific_ranges() {
        assert_eq!(fmt_sig(4.56789, 3), "4.57");
        assert_eq!(fmt_sig(1234.6, 4), "1235");
        assert_eq!(fmt_sig(0.012345, 2), "0.012");
        assert_eq!(fmt_sig(1.5e-7, 3), "1.50e-7");
        assert_eq!(fmt_sig(-2.0e6, 2), "-2.0e6");
        assert_eq!(fmt_sig(f64::NAN, 3), "NaN");
        assert_eq!(fmt_sig(0.0, 3), "0");
    }
}
