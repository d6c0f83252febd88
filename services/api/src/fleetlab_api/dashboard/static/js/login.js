// The login page needs no script; this module keeps the page shape of the others.
