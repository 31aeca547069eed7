// Package docs holds Herald's documentation (Markdown beside this file) and the test that
// keeps its relative links, and the front page's, pointing at something that exists.
package docs
