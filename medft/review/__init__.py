"""Clinician review: what the app needs that is not UI: cases, slice rendering, the review store, logins."""
