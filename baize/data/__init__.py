"""Data: seed files (seeds), the dialogue filters (filters), self-chat collection (collect) and
`baize data` stats | export | import | filter (commands)."""
