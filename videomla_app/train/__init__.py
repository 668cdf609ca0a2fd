"""Training: a resumable loop (`loop`), teacher-forcing flow matching (`flow`), and the stages that
reproduce the embedded model's shipped weights."""
