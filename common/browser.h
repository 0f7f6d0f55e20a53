/*
 * Opening a URL in a browser, for `mcpctl auth login` (with $BROWSER) and
 * for the keeper's own step-up and migration logins (with login.browser).
 */
#pragma once

/*
 * Opens url (http or https only) with the first program of list that can be
 * executed, without a shell: list is ':'-separated entries as in $BROWSER,
 * each split into words on spaces, "%s" as a word standing for the URL (the
 * URL is appended otherwise); NULL or empty means "xdg-open". The program is
 * not waited for: a short-lived intermediate child tries the entries and
 * reports whether one started, and what it started is reparented. It gets
 * /dev/null as stdin and stdout, a fresh session, the default signal
 * dispositions and mask, and no descriptor but 0-2.
 * Returns 0 when a program was started, -EINVAL for another URL, -ENOENT
 * when none could be executed, or another negative errno value.
 */
int browser_open(const char *list, const char *url);
