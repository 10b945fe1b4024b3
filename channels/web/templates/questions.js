// Progressive enhancement of the report form: show only the questions of the service chosen in
// "What kind of problem is it?". Without this script every service's questions show, each under
// its service's name, and the server reads only the chosen service's answers. A hidden fieldset
// is disabled too, so answers typed for another service are not even sent.
(function () {
  "use strict";
  var select = document.getElementById("service_code");
  var groups = document.querySelectorAll("fieldset[data-service]");
  if (!select || !groups.length) {
    return;
  }
  function show() {
    for (var i = 0; i < groups.length; i++) {
      var mine = groups[i].getAttribute("data-service") === select.value;
      groups[i].hidden = !mine;
      groups[i].disabled = !mine;
    }
    var intro = document.getElementById("questions-intro");
    if (intro) {
      intro.hidden = true;
    }
  }
  select.addEventListener("change", show);
  show();
})();
