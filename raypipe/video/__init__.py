"""Videos: frame sampling (SPEC §2.3), decoding with classified errors, encoding, SynthPref and its oracle."""
