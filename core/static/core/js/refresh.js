// Keeps a server-rendered fragment fresh: every element with data-refresh-url is fetched again every
// data-refresh-seconds (at least 2) and its content replaced by the answer, HTML the server rendered and escaped.
// A same-origin file, so the Content-Security-Policy (script-src 'self') allows it with no inline script.
// A failed fetch keeps the last content and tries again at the next tick; a redirect (the session ended, the
// login page answered) stops the refresh rather than paste the login form into the page. A fragment that carries
// data-refresh-final (e.g. a run that has ended: nothing will change any more) is the last one: the element loses
// its data-refresh-url and is not fetched again.
(function () {
  "use strict";
  function keepFresh(element) {
    var url = element.getAttribute("data-refresh-url");
    var seconds = Math.max(2, Number(element.getAttribute("data-refresh-seconds")) || 10);
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (response.redirected) {
            return null;
          }
          if (!response.ok) {
            throw new Error("status " + response.status);
          }
          return response.text().then(function (html) {
            element.innerHTML = html;
            if (element.querySelector("[data-refresh-final]")) {
              element.removeAttribute("data-refresh-url");
              return false;
            }
            return true;
          });
        })
        .then(
          function (again) {
            if (again) {
              window.setTimeout(tick, seconds * 1000);
            }
          },
          function () {
            window.setTimeout(tick, seconds * 1000);
          }
        );
    }
    window.setTimeout(tick, seconds * 1000);
  }
  document.querySelectorAll("[data-refresh-url]").forEach(keepFresh);
})();
